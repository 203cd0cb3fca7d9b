"""qwen_minimal.train / checkpoint / monitoring: the schedule equals PyTorch's
OneCycleLR, a short cpu-tiny run learns, a resumed run repeats the uninterrupted loss
curve exactly, a checkpoint gives back identical logits, the command line trains, stops
on Ctrl-C and resumes, and bad input fails fast. Runs offline."""

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from reference import MICRO_MODEL

from qwen_minimal import ModelConfig, QwenLM
from qwen_minimal.cli.train import main
from qwen_minimal.errors import InputError, MissingInputError
from qwen_minimal.training import TrainConfig, checkpoint, monitoring, plots, train
from qwen_minimal.training.optim import make_optimizer, one_cycle_lr

# A model small enough that a step takes milliseconds; the vocabulary still dominates
# its cost.
MICRO_CLI = [f"--model.{k}={v}" for k, v in MICRO_MODEL.items()]

# the fixtures' corpus and tokenizer are the defaults
pytestmark = pytest.mark.usefixtures("offline_data")


def micro_config(out_dir, **overrides) -> TrainConfig:
    values = dict(
        batch_size=4,
        block_size=16,
        max_steps=6,
        lr=3e-3,
        min_lr=1e-4,
        eval_interval=3,
        eval_batches=2,
        log_interval=1,
        monitor_interval=2,
        checkpoint_interval=1000,
        progress=False,
        out_dir=str(out_dir),
    )
    return TrainConfig.preset("cpu-tiny", model=MICRO_MODEL, **{**values, **overrides})


def test_lr_schedule_equals_torch_one_cycle():
    config = TrainConfig.preset("wikitext103", max_steps=200)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.lr,
        total_steps=config.max_steps,
        pct_start=config.warmup_frac,
        anneal_strategy="cos",
        cycle_momentum=False,
        div_factor=config.lr / config.min_lr,
        final_div_factor=1.0,
    )
    expected = []
    for _ in range(config.max_steps):
        expected.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    ours = [
        one_cycle_lr(
            step, config.max_steps, config.lr, config.min_lr, config.warmup_frac
        )
        for step in range(config.max_steps)
    ]
    torch.testing.assert_close(
        torch.tensor(ours, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
    )
    assert max(ours) == pytest.approx(config.lr)
    assert ours[0] == pytest.approx(config.min_lr) and ours[-1] == pytest.approx(
        config.min_lr
    )


def test_weight_decay_on_matrices_only():
    model = QwenLM(ModelConfig.preset("cpu-tiny", **MICRO_MODEL))
    decay, no_decay = make_optimizer(model, lr=1e-3).param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {p.dim() for p in decay["params"]} == {2, 3} and {
        p.dim() for p in no_decay["params"]
    } == {1}
    assert len(decay["params"]) + len(no_decay["params"]) == len(
        list(model.parameters())
    )


def test_cpu_tiny_run_learns(tmp_path):
    # cpu-tiny shrunk to a 32-wide model and 40 steps of 4 x 16 tokens, with a higher
    # learning rate
    result = train(
        micro_config(
            tmp_path, max_steps=40, lr=1e-2, eval_interval=40, monitor_interval=10
        )
    )
    evals = monitoring.of_kind(result.history, "eval")
    assert [r["step"] for r in evals] == [0, 40]
    # about log V: the untrained model guesses uniformly
    assert evals[0]["val_loss"] > math.log(result.config.model.vocab_size) - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.5, evals
    # one step's batch is 64 tokens, whose loss swings by a nat from step to step: the
    # last ten steps' mean
    losses = [r["lm_loss"] for r in monitoring.of_kind(result.history, "train")]
    assert statistics.mean(losses[-10:]) < losses[0] - 1.5, losses
    monitor = monitoring.of_kind(result.history, "monitor")
    assert all(len(r["kl_uniform"]) == 2 and len(r["act_std"]) == 2 for r in monitor)
    # each record counts its step's batch: num_experts_per_tok assignments per token per
    # layer
    assert all(
        sum(r["tokens_per_expert"][layer]) == 4 * 16 * 2
        for r in monitor
        for layer in range(2)
    )


def test_resume_repeats_the_uninterrupted_loss_curve(tmp_path):
    whole = train(micro_config(tmp_path / "whole"))
    with pytest.raises(InputError, match="resume"):
        train(micro_config(tmp_path / "whole"))  # never overwrite a finished run

    first = train(micro_config(tmp_path / "split"), stop_at=3)
    assert first.step == 3 and checkpoint.read_config(tmp_path / "split")["step"] == 3
    resumed = train(micro_config(tmp_path / "split"), resume=True)
    assert resumed.step == 6

    split_history = monitoring.read_metrics(tmp_path / "split" / "metrics.jsonl")

    # timings differ
    def strip(h):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in h]

    assert strip(split_history) == strip(whole.history)
    assert [r["step"] for r in monitoring.of_kind(whole.history, "train")] == list(
        range(6)
    )
    for a, b in zip(
        whole.model.state_dict().values(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b)


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(MissingInputError, match="no checkpoint"):
        train(micro_config(tmp_path / "empty"), resume=True)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    from qwen_minimal.data import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    # tied: stored once
    model = QwenLM(
        ModelConfig.preset("cpu-tiny", **MICRO_MODEL, vocab_size=len(tokenizer))
    )
    checkpoint.save_checkpoint(
        tmp_path, model, step=7, train_config={"note": "test"}, tokenizer=tokenizer
    )
    loaded = checkpoint.load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.embed.weight
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    assert torch.equal(model.eval()(ids).logits, loaded(ids).logits)
    assert checkpoint.read_config(tmp_path / "checkpoint")["step"] == 7
    text = "The tower is 324 metres tall."
    assert checkpoint.saved_tokenizer(tmp_path).encode(text) == tokenizer.encode(text)
    # readable by all
    assert all(
        p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "checkpoint").rglob("*")
    )


def test_kl_to_uniform():
    counts = torch.tensor([[5, 5, 5, 5], [20, 0, 0, 0], [2, 6, 0, 0]])
    p = torch.tensor([0.25, 0.75])
    expected = torch.tensor(
        [0.0, torch.log(torch.tensor(4.0)), (p * (p * 4).log()).sum()],
        dtype=torch.float64,
    )
    torch.testing.assert_close(monitoring.kl_to_uniform(counts), expected)


def test_unknown_preset_or_field_fails_with_the_valid_names(capsys):
    for argv, expected in (
        (["--preset", "huge"], "cpu-tiny"),
        (["--max_stepz", "3"], "--max_steps"),
        (["--model.hidden", "3"], "--model.hidden_size"),
        (["--max_steps", "many"], "valid int"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(InputError, match="known fields"):
        TrainConfig.preset("cpu-tiny", learning_rate=1.0)
    with pytest.raises(InputError, match="known fields"):
        TrainConfig.preset("cpu-tiny", model=dict(width=3))


def run_cli(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "qwen_minimal", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        **kwargs,
    )


def test_cli_trains_stops_on_ctrl_c_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    common = [
        "--preset",
        "cpu-tiny",
        "--out_dir",
        str(out),
        "--progress",
        "false",
        *MICRO_CLI,
    ]
    proc = run_cli(
        [
            *common,
            "--max_steps",
            "1000",
            "--batch_size",
            "4",
            "--block_size",
            "16",
            "--log_interval",
            "1",
            "--eval_interval",
            "500",
            "--eval_batches",
            "1",
            "--monitor_interval",
            "2",
        ]
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    step = checkpoint.read_config(out)["step"]
    assert 0 < step < 1000

    # Resume (in this process, to save a start-up): the run's saved settings, only told
    # to stop 2 steps later.
    main(
        [
            "--preset",
            "cpu-tiny",
            "--out_dir",
            str(out),
            "--resume",
            "--stop_at",
            str(step + 2),
        ]
    )
    assert f"Resuming {out} at step {step}" in capsys.readouterr().out
    saved = checkpoint.read_config(out)
    assert (
        saved["step"] == step + 2
        and saved["train"]["max_steps"] == 1000
        and saved["model"]["hidden_size"] == 32
    )
    records = monitoring.read_metrics(metrics)
    assert [r["step"] for r in monitoring.of_kind(records, "train")] == list(
        range(step + 2)
    )
    assert {p.name for p in (out / "analytics").iterdir()} == {
        f"{name}.png" for name in plots.PLOTS
    }
    assert all(p.stat().st_size > 10_000 for p in (out / "analytics").iterdir())
    assert {p.name for p in (out / "checkpoint").iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer",
        "train_state.pt",
    }
    json.loads((out / "checkpoint" / "config.json").read_text())
