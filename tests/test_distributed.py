"""Training across processes on CPU (gloo, 2 processes): the expert-parallel MoE layer
equals the local one, outputs and gradients, and sends one row per remote assignment;
torchrun trains with DDP, FSDP and expert parallelism on the one-process loss curve,
Qwen3-MoE and the Qwen3-Next hybrid alike (Gated DeltaNet layers, a shared expert beside
the routed ones), resumes on any number of processes, stops cleanly on Ctrl-C or SIGTERM
(holding its folder until then), and stops within seconds when a process fails. Every
multi-process check runs under a time limit, so that a hang fails the test instead of
blocking the suite."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import reference
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qwen_minimal.cli.train import main
from qwen_minimal.errors import InputError
from qwen_minimal.model.moe import Experts
from qwen_minimal.training import (
    TrainConfig,
    checkpoint,
    distributed,
    monitoring,
    train,
)
from qwen_minimal.training.expert_parallel import ExpertParallelExperts, gather_to_rank0
from qwen_minimal.training.monitoring import read_metrics

WORLD = 2
# seconds for one multi-process check, start-up included (5 to 15 s on a busy 2-core
# machine)
TIME_LIMIT = 120


def run_processes(*checks, world: int = WORLD, timeout: float = TIME_LIMIT) -> None:
    """check(rank, world) for each check, in `world` spawned processes joined into one
    gloo group. Fails with the first process's error, or if they have not all finished
    after `timeout` seconds (and then kills them)."""
    with tempfile.TemporaryDirectory() as folder:
        context = mp.start_processes(
            _init_and_run,
            (world, os.path.join(folder, "rendezvous"), checks),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        try:
            end = time.monotonic() + timeout
            while not context.join(timeout=1):
                if time.monotonic() > end:
                    pytest.fail(f"{world} processes did not finish within {timeout} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()


def _init_and_run(rank, world, rendezvous, checks):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world
    )
    try:
        for check in checks:
            check(rank, world)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------ the expert-parallel layer

NUM_EXPERTS, HIDDEN, WIDTH, K = 4, 16, 8, 2
# rank 0 holds 5 tokens, rank 1 holds 3: the ranks need not hold equal numbers
TOKENS = (
    5,
    3,
)


def routing_cases():
    """(expert_indices, expert_weights, kept) for all 8 tokens: random, then one where
    every token chooses experts 0 and 1 (rank 1's experts receive no row), then a
    capacity-like mask that drops some assignments."""
    g = torch.Generator().manual_seed(0)
    n = sum(TOKENS)
    random = torch.stack(
        [torch.randperm(NUM_EXPERTS, generator=g)[:K] for _ in range(n)]
    )
    weights = torch.rand(n, K, generator=g).softmax(-1)
    only_rank0 = torch.tensor([[0, 1]] * n)
    dropped = torch.rand(n, K, generator=g) > 0.3
    return [
        (random, weights, None),
        (only_rank0, weights, None),
        (random, weights, dropped),
    ]


def check_expert_parallel_layer(rank, world):
    torch.manual_seed(0)
    reference = Experts(NUM_EXPERTS, HIDDEN, WIDTH, init_std=0.5)
    x_all = torch.randn(sum(TOKENS), HIDDEN)
    # the loss is sum(y * cotangent): every output element counts
    cotangent = torch.randn(sum(TOKENS), HIDDEN)
    mine = slice(sum(TOKENS[:rank]), sum(TOKENS[: rank + 1]))
    for indices, weights, kept in routing_cases():
        reference.zero_grad()
        x_ref, w_ref = x_all.clone().requires_grad_(), weights.clone().requires_grad_()
        y_ref = reference(x_ref, indices, w_ref, kept)
        (y_ref * cotangent).sum().backward()

        parallel = ExpertParallelExperts(reference)  # experts 2 * rank, 2 * rank + 1
        x, w = (
            x_all[mine].clone().requires_grad_(),
            weights[mine].clone().requires_grad_(),
        )
        y = parallel(x, indices[mine], w, None if kept is None else kept[mine])
        (y * cotangent[mine]).sum().backward()

        # fp32, the same arithmetic in another grouping: assert_close's fp32 defaults
        # (rtol 1.3e-6, atol 1e-5)
        torch.testing.assert_close(y, y_ref[mine])
        torch.testing.assert_close(x.grad, x_ref.grad[mine])
        torch.testing.assert_close(w.grad, w_ref.grad[mine])
        for name in ("gate_proj", "up_proj", "down_proj"):
            # each rank's loss reaches every rank's experts: the expert gradient sums
            # both ranks' losses
            full = gather_to_rank0(getattr(parallel, name).grad, parallel.group)
            if rank == 0:
                torch.testing.assert_close(full, getattr(reference, name).grad)


def check_bytes_sent(rank, world):
    """What the all-to-alls send over the wire: one row of H fp32 numbers per assignment
    of a token to an expert on another rank, counted at dist.all_to_all_single itself,
    against the count from the routing."""
    torch.manual_seed(0)
    sent = []

    def counting_all_to_all(out, rows, recv_splits=None, send_splits=None, group=None):
        if rows.dim() == 2:  # the rows, not the counts
            sent.append(
                sum(n for r, n in enumerate(send_splits) if r != rank) * rows[0].nbytes
            )
        return all_to_all_single(out, rows, recv_splits, send_splits, group=group)

    all_to_all_single, dist.all_to_all_single = (
        dist.all_to_all_single,
        counting_all_to_all,
    )
    indices, weights, _ = routing_cases()[0]
    mine = slice(sum(TOKENS[:rank]), sum(TOKENS[: rank + 1]))
    parallel = ExpertParallelExperts(Experts(NUM_EXPERTS, HIDDEN, WIDTH))
    x = torch.randn(TOKENS[rank], HIDDEN, requires_grad=True)
    parallel(x, indices[mine], weights[mine]).sum().backward()
    dist.all_to_all_single = all_to_all_single

    holder = indices // parallel.num_local  # the rank holding each assignment's expert
    token_rank = torch.arange(world).repeat_interleave(torch.tensor(TOKENS))[:, None]
    # my tokens' rows, to the other rank
    away = ((token_rank == rank) & (holder != rank)).sum().item()
    # the other rank's, to my experts
    visiting = ((token_rank != rank) & (holder == rank)).sum().item()
    row = HIDDEN * 4
    # forward: dispatch sends mine away, combine sends the visitors' back; backward: the
    # reverse of each
    assert sent == [away * row, visiting * row, away * row, visiting * row]
    assert away > 0 and visiting > 0


def test_expert_parallel_layer_equals_the_local_one_and_sends_a_row_per_remote_choice():
    run_processes(check_expert_parallel_layer, check_bytes_sent)


def test_each_process_takes_its_part_of_every_micro_batch(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    batch = torch.arange(8)[:, None].expand(8, 3)  # row b holds b
    parts = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.rank_rows(batch, grad_accum_steps=2)[:, 0])
    assert [p.tolist() for p in parts] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # chunked into micro-batches again, the two processes hold the halves of one
    # process's micro-batches
    for m, micro_batch in enumerate(batch[:, 0].chunk(2)):
        assert (
            sorted(torch.cat([p.chunk(2)[m] for p in parts]).tolist())
            == micro_batch.tolist()
        )
    with pytest.raises(InputError, match="multiple of 4"):
        distributed.check_batch(6, grad_accum_steps=2)


def test_each_process_evaluates_its_rows_and_every_process_runs_every_batch(
    monkeypatch,
):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rows, expected in (
        (5, [([0, 1, 2], True), ([3, 4], True)]),
        (1, [([0], True), ([0], False)]),
    ):
        batch = torch.arange(rows)[:, None]
        got = []
        for r in range(2):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            x, y, counted = distributed.eval_rows(batch, batch + 1)
            assert torch.equal(y, x + 1)
            got.append((x[:, 0].tolist(), counted))
        # a process without rows of its own runs the forward pass on one, uncounted
        assert got == expected


# --------------------------------------------------------------- training with torchrun

# A micro model and batch (batch 8 = 2 processes x 2 micro-batches x 2 rows): each step
# takes milliseconds, so the time of these tests is the start-up of the processes.
# global_batch balancing counts the experts' load over every micro-batch and process, so
# the loss curve does not depend on the number of processes.
MICRO_MODEL = dict(reference.MICRO_MODEL, load_balancing="global_batch")
SETTINGS = dict(
    batch_size=8,
    grad_accum_steps=2,
    block_size=16,
    max_steps=20,
    lr=3e-3,
    min_lr=1e-4,
    eval_interval=5,
    eval_batches=2,
    log_interval=1,
    monitor_interval=4,
    checkpoint_interval=1000,
    progress=False,
)
# The same micro model as a cpu-tiny-hybrid: layers 0-2 Gated DeltaNet (one key head,
# two value heads), layer 3 gated attention, and a shared expert beside the 4 routed
# ones. Under expert parallelism its routed experts are split over the processes and
# the shared expert stays data parallel, as attention and the router do.
MICRO_HYBRID = dict(
    MICRO_MODEL,
    num_layers=4,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    shared_expert_intermediate_size=32,
)
MICRO = {"cpu-tiny": MICRO_MODEL, "cpu-tiny-hybrid": MICRO_HYBRID}


def cli(model: dict) -> list[str]:
    return [
        *(f"--{k}={v}" for k, v in SETTINGS.items()),
        *(f"--model.{k}={v}" for k, v in model.items()),
    ]


CLI = cli(MICRO_MODEL)
# fp32 on both sides; the processes add their partial sums in another order than one
# process, and AdamW's division by sqrt(v) amplifies such differences in the first
# steps: 1e-5 on the losses (about 1e-6 relative).
LOSS_TOLERANCE = 1e-5


def torchrun(
    args: list[str], timeout: float = TIME_LIMIT, **kwargs
) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 ARGS` (as python -m torch.distributed.run), started,
    output captured."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(WORLD),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: float = TIME_LIMIT) -> tuple[str, str]:
    """Wait for torchrun; past the time limit, stop it with SIGTERM (which it passes on
    to its processes, and SIGKILLs them 30 s later) and fail."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{stderr[-3000:]}")


def train_on_two(out_dir, *args, preset: str = "cpu-tiny") -> str:
    proc = torchrun(
        [
            "-m",
            "qwen_minimal",
            "train",
            "--preset",
            preset,
            "--out_dir",
            str(out_dir),
            *cli(MICRO[preset]),
            *args,
        ]
    )
    stdout, stderr = finish(proc)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def train_losses(out_dir) -> dict[int, float]:
    return {
        r["step"]: r["lm_loss"]
        for r in monitoring.of_kind(read_metrics(out_dir / "metrics.jsonl"), "train")
    }


@pytest.mark.parametrize("preset", MICRO)
@pytest.mark.usefixtures("offline_data")
def test_every_layout_follows_the_one_process_curve_and_resumes_on_any_process_count(
    tmp_path, preset
):
    """One run handed on from layout to layout, each for 4 or 5 steps, through its
    checkpoint: DDP on 2 processes, then 1 process, then FSDP on 2, expert parallelism
    on 2, and 1 process again. Its curve is the one-process curve of the same settings
    at every step: each layout trains like one process, saves the one-process
    checkpoint, and resumes from a checkpoint of any other."""
    whole = train(
        TrainConfig.preset(
            preset, model=MICRO[preset], out_dir=str(tmp_path / "whole"), **SETTINGS
        )
    )
    expected = {
        r["step"]: r["lm_loss"] for r in monitoring.of_kind(whole.history, "train")
    }
    run = tmp_path / "handed-on"
    stdout = train_on_two(run, "--stop_at=5", preset=preset)  # ddp, the default
    assert "2 processes" in stdout and stdout.count("Data:") == 1  # only rank 0 prints
    main(["--out_dir", str(run), "--resume", "--stop_at=8"])
    train_on_two(run, "--resume", "--parallel=fsdp", "--stop_at=12", preset=preset)
    train_on_two(
        run,
        "--resume",
        "--parallel=ddp",
        "--expert_parallel=true",
        "--stop_at=16",
        preset=preset,
    )
    main(["--out_dir", str(run), "--resume"])
    got = train_losses(run)
    assert sorted(got) == list(range(SETTINGS["max_steps"]))
    for step, loss in expected.items():
        assert abs(got[step] - loss) < LOSS_TOLERANCE, (step, got[step], loss)
    # the evaluations (split over the processes) and the final weights agree as well
    evals = [
        (r["step"], r["val_loss"])
        for r in monitoring.of_kind(read_metrics(run / "metrics.jsonl"), "eval")
    ]
    expected_evals = [
        (r["step"], r["val_loss"]) for r in monitoring.of_kind(whole.history, "eval")
    ]
    assert [s for s, _ in evals] == [s for s, _ in expected_evals]
    assert all(
        abs(a - b) < LOSS_TOLERANCE
        for (_, a), (_, b) in zip(evals, expected_evals, strict=True)
    ), evals
    final = checkpoint.load_model(run)
    for (name, a), b in zip(
        whole.model.state_dict().items(), final.state_dict().values(), strict=True
    ):
        # atol 5e-5: a token seen once or twice gets an embedding gradient near
        # rounding size, which AdamW's g / sqrt(v) turns into steps of about lr; in the
        # hybrid run one element of the 1.6M drifts 1.6e-5, every other stays within
        # a tenth of 1e-5
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5, msg=name)


# Rank 1 raises in its third training step, while rank 0 waits for it in the gradient
# all-reduce.
FAIL_ON_RANK_1 = """
import os, sys, time
from qwen_minimal.cli import train as train_cli
from qwen_minimal.training import loop
if os.environ["RANK"] == "1":
    step, calls = loop.train_step, []
    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            print(f"injected failure at {time.time()}", file=sys.stderr, flush=True)
            raise RuntimeError("injected failure on rank 1")
        return step(*args, **kwargs)
    loop.train_step = failing_step
train_cli.main(sys.argv[1:])
"""


@pytest.mark.usefixtures("offline_data")
def test_a_rank_that_fails_stops_the_run_within_seconds(tmp_path):
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    proc = torchrun(
        [
            str(script),
            "--preset",
            "cpu-tiny",
            "--out_dir",
            str(tmp_path / "run"),
            *CLI,
            "--max_steps=1000",
        ]
    )
    stdout, stderr = finish(proc)
    ended = time.time()
    assert proc.returncode != 0
    # the failing rank's error is shown
    assert "RuntimeError: injected failure on rank 1" in stderr
    failed_at = float(stderr.split("injected failure at ")[1].split()[0])
    assert ended - failed_at < 10, (
        f"the run went on for {ended - failed_at:.1f} s after the failure"
    )


@pytest.mark.usefixtures("offline_data")
@pytest.mark.parametrize(
    "stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_stops_every_process_at_one_step_with_one_checkpoint(
    tmp_path, stop, capsys
):
    """Ctrl-C in the terminal, or SIGTERM from a scheduler, to torchrun, which passes it
    on to every process; while the run goes on, its folder is refused to another."""
    run = tmp_path / "run"
    proc = torchrun(
        [
            "-m",
            "qwen_minimal",
            "train",
            "--preset",
            "cpu-tiny",
            "--out_dir",
            str(run),
            *CLI,
            "--max_steps=1000",
            "--eval_interval=500",
        ]
    )
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + TIME_LIMIT
    while not (metrics.exists() and '"train"' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.2)
    # rank 0 holds the folder for both processes
    with pytest.raises(SystemExit) as exit_info:
        main(["--out_dir", str(run), *CLI, "--max_steps=2"])
    assert exit_info.value.code == 2
    assert f"{run} is in use by another training" in capsys.readouterr().err
    proc.send_signal(stop)
    stdout, stderr = finish(proc, timeout=60)
    # Both processes stop after the same step (else the one saving would wait for the
    # other forever) and rank 0 saves; torchrun itself then exits with 1 (it re-raises
    # the signal it received, with a traceback).
    assert stderr.count("Interrupted at step") == 1, stderr[-3000:]
    step = checkpoint.read_config(run)["step"]
    assert f"Interrupted at step {step}:" in stderr and 0 < step < 1000
    assert proc.returncode == 1, proc.returncode
    main(["--out_dir", str(run), "--resume", f"--stop_at={step + 1}"])  # and it resumes
    assert checkpoint.read_config(run)["step"] == step + 1
