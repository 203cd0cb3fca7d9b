"""A damaged checkpoint: a truncated model.safetensors, a garbage train_state.pt or an
invalid config.json makes `python -m qwen_minimal generate` and `python -m qwen_minimal
train --resume` stop with one line that names the file and says what to do (exit status
2, no traceback), in under 2 s after start-up, before the corpus is read; and every file
of a saved checkpoint is readable by others, whatever the umask. Runs offline."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import reference
import torch

from qwen_minimal import QwenLM
from qwen_minimal.cli import generate
from qwen_minimal.cli import train as train_cli
from qwen_minimal.data import load_tokenizer
from qwen_minimal.errors import InputError
from qwen_minimal.training import TrainConfig, checkpoint, loop
from qwen_minimal.training.optim import make_optimizer

# the fixtures' corpus and tokenizer are the defaults
pytestmark = pytest.mark.usefixtures("offline_data")

MICRO_MODEL = dict(reference.MICRO_MODEL, num_layers=1)
SECONDS_AFTER_START_UP = 2.0


def save_run(out_dir, tokenizer_folder):
    """A checkpoint as train.py saves one: a model, its tokenizer, one step's optimizer
    moments and the settings of a real TrainConfig (so that --resume gets as far as the
    files)."""
    tokenizer = load_tokenizer(tokenizer_folder)
    config = TrainConfig.preset(
        "cpu-tiny",
        model=dict(MICRO_MODEL, vocab_size=len(tokenizer)),
        batch_size=2,
        block_size=16,
        progress=False,
        out_dir=str(out_dir),
    )
    torch.manual_seed(0)
    model = QwenLM(config.model)
    optimizer = make_optimizer(model, config.lr)
    ids = torch.randint(0, len(tokenizer), (2, 16))
    model(ids, targets=ids).loss.backward()
    optimizer.step()
    settings = {k: v for k, v in config.to_dict().items() if k != "model"}
    return checkpoint.save_checkpoint(
        out_dir,
        model,
        step=1,
        train_config=settings,
        tokenizer=tokenizer,
        optimizer=optimizer,
    )


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tokenizer_folder):
    out_dir = tmp_path_factory.mktemp("good") / "run"
    save_run(out_dir, tokenizer_folder)
    return out_dir


def cut_in_half(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def write_garbage(file):
    file.write_bytes(b"\x80\x04 not what torch.save writes \xff" * 64)


def flip_middle_bytes(file):
    """Damage that keeps the size and the structure: only the checksums can tell."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    file.write_bytes(bytes(data))


def impossible_model(file):
    config = json.loads(file.read_text())
    config["model"]["hidden_size"] = 0
    file.write_text(json.dumps(config))


def mistyped_setting(file):
    config = json.loads(file.read_text())
    config["model"]["hidden_size"] = str(config["model"]["hidden_size"])
    file.write_text(json.dumps(config))


def missing_setting(file):
    config = json.loads(file.read_text())
    del config["model"]["num_heads"]  # its default, 16, does not fit the weights
    file.write_text(json.dumps(config))


DAMAGES = {  # id: (file, how it is damaged, what the message says the problem is)
    "truncated weights": (
        checkpoint.WEIGHTS,
        cut_in_half,
        "not a readable safetensors file",
    ),
    "garbage train state": (
        checkpoint.TRAIN_STATE,
        write_garbage,
        "not the zip archive that torch.save writes",
    ),
    "flipped weight bytes": (
        checkpoint.WEIGHTS,
        flip_middle_bytes,
        "its SHA-256 is not the one config.json recorded",
    ),
    "flipped train state bytes": (
        checkpoint.TRAIN_STATE,
        flip_middle_bytes,
        "its SHA-256 is not the one config.json recorded",
    ),
    "truncated config": (checkpoint.CONFIG, cut_in_half, "not valid JSON"),
    "impossible model settings": (
        checkpoint.CONFIG,
        impossible_model,
        "hidden_size must be at least 1",
    ),
    "a model setting of the wrong type": (
        checkpoint.CONFIG,
        mistyped_setting,
        "hidden_size='32' should be int",
    ),
    "a missing model setting": (
        checkpoint.CONFIG,
        missing_setting,
        "it lacks the model settings ['num_heads'], whose defaults do not fit",
    ),
}
TOOLS = {  # the command line of each tool for a run folder
    "generate": lambda run: [
        "qwen_minimal",
        "generate",
        "--checkpoint",
        str(run),
        "--max_new_tokens",
        "2",
    ],
    "train --resume": lambda run: [
        "qwen_minimal",
        "train",
        "--out_dir",
        str(run),
        "--resume",
        "--stop_at",
        "2",
    ],
}
# Each damage for each tool, but train_state.pt for generate, which never reads it
# (test_generate_needs_only_...).
FAILURES = [
    (damage, tool)
    for damage in DAMAGES
    for tool in TOOLS
    if not (tool == "generate" and DAMAGES[damage][0] == checkpoint.TRAIN_STATE)
]


def damaged_copy(good_run, tmp_path, damage: str):
    """A copy of good_run with one file damaged as DAMAGES[damage] says: (run folder,
    the damaged file)."""
    name, how, _ = DAMAGES[damage]
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    how(run / checkpoint.CHECKPOINT_DIR / name)
    return run, run / checkpoint.CHECKPOINT_DIR / name


def assert_one_clear_line(stderr: str, file, problem: str):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(file) in lines[0] and problem in lines[0] and "To go on, " in lines[0], (
        lines[0]
    )
    assert "Traceback" not in stderr


@pytest.mark.parametrize("damage, tool", FAILURES)
def test_damaged_file_stops_the_tool_with_one_line_within_two_seconds(
    good_run, tmp_path, damage, tool, capsys, monkeypatch
):
    run, file = damaged_copy(good_run, tmp_path, damage)
    # the checks come first: tokenizing the corpus (minutes for WikiText-103, the first
    # time) must not come before
    monkeypatch.setattr(
        loop,
        "load_corpus",
        lambda *args: pytest.fail("the corpus was loaded before the checks"),
    )
    # the tools' entry points, as `python -m` calls them
    main = generate.main if tool == "generate" else train_cli.main
    start = time.perf_counter()
    # any other exception than SystemExit would be a traceback
    with pytest.raises(SystemExit) as exit_info:
        main(TOOLS[tool](run)[2:])
    seconds = time.perf_counter() - start
    assert exit_info.value.code == 2
    assert_one_clear_line(capsys.readouterr().err, file, DAMAGES[damage][2])
    assert seconds < SECONDS_AFTER_START_UP, (
        f"{tool} took {seconds:.2f} s to report {file.name}"
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_from_a_shell_the_error_is_one_line_and_status_2(good_run, tmp_path, tool):
    run, file = damaged_copy(good_run, tmp_path, "truncated weights")
    process = subprocess.run(
        [sys.executable, "-m", *TOOLS[tool](run)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert process.returncode == 2, process.stderr
    assert_one_clear_line(process.stderr, file, DAMAGES["truncated weights"][2])


def test_generate_needs_only_the_weights(good_run, tmp_path, capsys):
    """A garbage train_state.pt stops a resume (above) but not generation, as the
    message for it says."""
    run, _ = damaged_copy(good_run, tmp_path, "garbage train state")
    with pytest.raises(
        InputError, match="generate from the weights, which are not affected"
    ):
        checkpoint.check_resumable(run)
    generate.main(TOOLS["generate"](run)[2:])
    captured = capsys.readouterr()
    assert "(step 1)" in captured.err and captured.out.strip()


def test_the_undamaged_checkpoint_resumes(good_run, tmp_path):
    """The control: the same checkpoint, undamaged, passes the checks and trains on to
    the next step."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    checkpoint.check_resumable(run)
    train_cli.main(TOOLS["train --resume"](run)[2:])
    assert checkpoint.read_config(run)["step"] == 2


def test_a_checkpoint_saved_without_checksums_still_loads(good_run, tmp_path, capsys):
    """Checkpoints from before the checksums: nothing to check them against."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    config_file = run / checkpoint.CHECKPOINT_DIR / checkpoint.CONFIG
    config = json.loads(config_file.read_text())
    assert set(config.pop("sha256")) == {checkpoint.WEIGHTS, checkpoint.TRAIN_STATE}
    config_file.write_text(json.dumps(config))
    checkpoint.check_resumable(run)
    generate.main(TOOLS["generate"](run)[2:])
    assert "(step 1)" in capsys.readouterr().err


def test_every_file_of_a_checkpoint_is_readable_by_others(tmp_path, tokenizer_folder):
    # as strict as a umask gets: what is readable by others was made so by the save
    umask = os.umask(0o077)
    try:
        folder = save_run(tmp_path / "run", tokenizer_folder)
    finally:
        os.umask(umask)
    paths = [folder, *folder.rglob("*")]
    assert {p.name for p in paths} >= {
        checkpoint.WEIGHTS,
        checkpoint.CONFIG,
        checkpoint.TRAIN_STATE,
        "tokenizer.json",
    }
    # group and others: read (and enter folders)
    for_others = {p: 0o055 if p.is_dir() else 0o044 for p in paths}
    assert not [
        f"{p}: {p.stat().st_mode & 0o777:o}"
        for p, bits in for_others.items()
        if p.stat().st_mode & bits != bits
    ]
