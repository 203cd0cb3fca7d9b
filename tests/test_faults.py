"""Nothing lost to ordinary mistakes and faults: a second training into a run's folder
is refused while the first goes on, SIGTERM stops a run like Ctrl-C (a checkpoint, then
exit status 143), a diverging run stops without saving its NaN weights, a checkpoint
damaged in place is caught by its checksums, and a full disk is one line that leaves
the last checkpoint resumable. Runs offline; every subprocess has a time limit."""

import os
import signal
import subprocess
import sys
import time

import pytest

from qwen_minimal.cli.train import main
from qwen_minimal.training import checkpoint, loop

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
