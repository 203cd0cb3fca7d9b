"""Nothing lost to ordinary mistakes and faults: a second training into a run's folder
is refused while the first goes on, SIGTERM stops a run like Ctrl-C (a checkpoint, then
exit status 143), a diverging run stops without saving its NaN weights, a checkpoint
damaged in place is caught by its checksums, and a full disk is one line that leaves
the last checkpoint resumable. Runs offline; every subprocess has a time limit."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from qwen_minimal.cli.train import main
from qwen_minimal.errors import InputError
from qwen_minimal.training import TrainConfig, checkpoint, loop

pytestmark = pytest.mark.usefixtures("offline_data")

MICRO_MODEL = dict(
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    num_experts=4,
    num_experts_per_tok=2,
    expert_intermediate_size=32,
    max_seq_len=32,
)
MICRO_CLI = [
    "--preset",
    "cpu-tiny",
    "--progress",
    "false",
    "--batch_size",
    "4",
    "--block_size",
    "16",
    "--eval_batches",
    "1",
    *(f"--model.{k}={v}" for k, v in MICRO_MODEL.items()),
]
# a run that goes on until it is stopped
ENDLESS = ["--max_steps", "100000", "--log_interval", "1", "--eval_interval", "50000"]
SECONDS = 60  # the most any one process of these tests may take


def start_training(out_dir, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qwen_minimal", "train", "--out_dir", str(out_dir)]
        + MICRO_CLI
        + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def wait_until_training(proc: subprocess.Popen, out_dir) -> None:
    """Until the run has logged a training step (so it holds its folder and its signal
    handlers are set)."""
    metrics = out_dir / "metrics.jsonl"
    deadline = time.time() + SECONDS
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)


def run_training(out_dir, *args) -> subprocess.CompletedProcess:
    proc = start_training(out_dir, *args)
    stdout, stderr = proc.communicate(timeout=SECONDS)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_second_training_into_a_busy_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = start_training(out, *ENDLESS)
    try:
        wait_until_training(first, out)
        second = run_training(out, "--max_steps", "2")
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert f"{out} is in use by another training (pid {first.pid})" in line
        assert "choose another --out_dir" in line
        # the first run is unharmed: it stops when told, with its checkpoint
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=SECONDS)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    assert checkpoint.read_config(out)["step"] > 0


def test_the_folder_is_free_again_after_a_run_and_never_given_to_a_new_run(tmp_path):
    """The lock goes with the training (in-process too); a folder with a checkpoint
    left as checkpoint.old by a save that died is not overwritten by a new run."""
    out = tmp_path / "run"
    with loop.own_run_folder(out):
        with pytest.raises(SystemExit) as exit_info:
            main(["--out_dir", str(out), *MICRO_CLI, "--max_steps", "2"])
        assert exit_info.value.code == 2
    main(["--out_dir", str(out), *MICRO_CLI, "--max_steps", "3", "--stop_at", "2"])
    assert checkpoint.read_config(out)["step"] == 2
    (out / checkpoint.CHECKPOINT_DIR).rename(out / "checkpoint.old")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out_dir", str(out), *MICRO_CLI, "--max_steps", "2"])
    assert exit_info.value.code == 2
    main(["--out_dir", str(out), "--resume"])
    assert checkpoint.read_config(out)["step"] == 3
    assert not (out / "checkpoint.old").exists()


def test_sigterm_saves_a_checkpoint_like_ctrl_c_and_the_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    proc = start_training(out, *ENDLESS)
    try:
        wait_until_training(proc, out)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=SECONDS)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "SIGTERM: stopping after this step and saving a checkpoint" in stderr
    assert "Traceback" not in stderr
    step = checkpoint.read_config(out)["step"]
    assert step > 0
    main(["--out_dir", str(out), "--resume", "--stop_at", str(step + 1)])
    assert f"Resuming {out} at step {step}" in capsys.readouterr().out
    assert checkpoint.read_config(out)["step"] == step + 1


@pytest.mark.parametrize("name", ["lr", "min_lr", "warmup_frac", "beta2", "grad_clip"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_settings_are_refused(name, value, capsys):
    with pytest.raises(InputError, match=f"{name}={value} must be a finite number"):
        TrainConfig.preset("cpu-tiny", **{name: float(value)})
    with pytest.raises(SystemExit) as exit_info:
        main([f"--{name}", value])
    assert exit_info.value.code == 2
    assert f"{name}={value} must be a finite number" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, text_folder, tokenizer_folder):
    """A run stopped after 2 of 8 steps, with its checkpoint."""
    out = tmp_path_factory.mktemp("two_steps") / "run"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("QWEN_MINIMAL_DATA", str(text_folder))
        m.setenv("QWEN_MINIMAL_TOKENIZER", str(tokenizer_folder))
        main(["--out_dir", str(out), *MICRO_CLI, "--max_steps", "8", "--stop_at", "2"])
    return out


# log_interval 1: caught at the log line; 1000: caught before the checkpoint at step 4
@pytest.mark.parametrize("log_interval", [1, 1000])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(
    two_steps, tmp_path, capsys, log_interval
):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    weights = out / checkpoint.CHECKPOINT_DIR / checkpoint.WEIGHTS
    good = weights.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        # an absurd learning rate without clipping: nan within two steps
        main(
            ["--out_dir", str(out), "--resume", "--lr", "1e30", "--grad_clip", "0"]
            + ["--log_interval", str(log_interval), "--checkpoint_interval", "2"]
        )
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert "training diverged: the loss or gradient norm is nan or inf by step" in line
    assert f"the last good checkpoint (step 2) is kept in {out}" in line
    assert "Try a lower --lr (now 1e+30)" in line and "--grad_clip 1.0" in line
    assert checkpoint.read_config(out)["step"] == 2 and weights.read_bytes() == good
    assert not (out / "checkpoint.tmp").exists()
