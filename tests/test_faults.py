"""Nothing lost to ordinary mistakes and faults: a second training into a run's folder
is refused while the first goes on, SIGTERM stops a run like Ctrl-C (a checkpoint, then
exit status 143), a diverging run stops without saving its NaN weights, a checkpoint
damaged in place is caught by its checksums, and a full disk is one line that leaves
the last checkpoint resumable. Runs offline; every subprocess has a time limit."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import reference

from qwen_minimal.cli.train import main
from qwen_minimal.errors import InputError
from qwen_minimal.training import TrainConfig, checkpoint, loop, monitoring

pytestmark = pytest.mark.usefixtures("offline_data")

MICRO_MODEL = dict(reference.MICRO_MODEL, num_layers=1)
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
# the most any one process of these tests may take: a hang guard, with room for a
# loaded machine (seen: over 60 s to start python and torch with 4 other jobs running)
SECONDS = 180


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


class FullDisk:
    """A file whose writes fail as on a full disk once `room` bytes are written."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def assert_full_disk_kept_the_checkpoint(out, stderr: str, step: int = 2):
    line = one_error_line(stderr)
    assert line.startswith(f"error: cannot write {out}"), line
    assert "No space left on device (errno 28): free space, or choose another " in line
    assert checkpoint.read_config(out)["step"] == step
    checkpoint.check_resumable(out)
    assert not (out / "checkpoint.tmp").exists()


def test_a_full_disk_is_one_line_and_the_last_checkpoint_resumes(
    two_steps, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    capsys.readouterr()
    # the training state's file (which torch.save says it cannot write as a
    # RuntimeError of its own) fills the disk
    with monkeypatch.context() as m, pytest.raises(SystemExit) as exit_info:
        m.setattr(
            checkpoint,
            "open",
            lambda *args: FullDisk(open(*args), room=1000),
            raising=False,
        )
        main(["--out_dir", str(out), "--resume", "--stop_at", "3"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {out / 'checkpoint.tmp'}: ")
    assert_full_disk_kept_the_checkpoint(out, line)
    main(["--out_dir", str(out), "--resume", "--stop_at", "3"])
    assert checkpoint.read_config(out)["step"] == 3


def test_on_a_real_full_disk_too(two_steps, tmp_path, capsys):
    """A file system with room for one checkpoint, not for the next beside it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sum(f.stat().st_size for f in two_steps.rglob("*") if f.is_file())
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        timeout=SECONDS,
    )
    if mount.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        out = disk / "run"
        shutil.copytree(two_steps, out)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["--out_dir", str(out), "--resume", "--stop_at", "3"])
        assert exit_info.value.code == 2
        assert_full_disk_kept_the_checkpoint(out, capsys.readouterr().err)
    finally:
        subprocess.run(["umount", str(disk)], timeout=SECONDS, check=True)


def test_a_metrics_line_cut_short_is_dropped_on_resume(two_steps, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(two_steps, out)
    metrics = out / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"kind": "train", "step": 2, "lo')  # a crash in the middle of a line
    capsys.readouterr()
    main(["--out_dir", str(out), "--resume", "--stop_at", "3"])
    err = capsys.readouterr().err
    assert f"warning: dropped the last line of {metrics}, which was cut short" in err
    assert "Traceback" not in err
    assert checkpoint.read_config(out)["step"] == 3
    # the file was rewritten whole, so a line cut short elsewhere is damage
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(InputError, match=f"{metrics} line 2 is not a JSON record"):
        monitoring.read_metrics(metrics)
