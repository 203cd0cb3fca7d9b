"""The training loop: `train(TrainConfig)` runs a whole run, from Python

    from qwen_minimal.training import TrainConfig, train
    config = TrainConfig.preset("cpu-tiny", max_steps=100, model=dict(num_layers=2))
    result = train(config)

or `python -m qwen_minimal train --preset cpu-tiny` from a shell (cli/train.py).

The objective is next-token cross-entropy plus router_aux_loss_coef times the
load-balancing loss, minimised by AdamW under a one-cycle cosine learning-rate schedule
(optim.py), with gradient clipping, bfloat16 autocast around fp32 master weights, and
optionally torch.compile. Everything a run writes goes to out_dir: the checkpoint
(checkpoint.py), metrics.jsonl (monitoring.py) and analytics/*.png (plots.py). Under
torchrun the run is the same as in one process (distributed.py): data parallel (DDP) by
default, sharded with parallel=fsdp, with the experts spread over the processes with
expert_parallel=True.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import Corpus, load_corpus, random_blocks, sequential_blocks
from ..devices import describe, peak_flops
from ..errors import InputError
from ..files import cannot_write
from ..model import balancing
from ..model.decoder import QwenLM
from . import checkpoint, distributed, monitoring, plots
from .config import TrainConfig
from .optim import make_optimizer, one_cycle_lr, set_lr


@dataclass
class TrainResult:
    model: QwenLM  # the trained model (fp32 weights, on the training device)
    config: TrainConfig  # as run, with model.vocab_size set to the tokenizer's
    history: list[dict]  # every record of out_dir/metrics.jsonl (see monitoring.py)
    out_dir: Path
    step: int  # optimizer steps done
    interrupted: bool  # stopped by Ctrl-C or SIGTERM (a checkpoint was saved)
    tokenizer: object = None
    # the signal that stopped it (another process's: SIGINT), None if not interrupted
    stop_signal: int | None = None


# ----------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig, resume: bool = False, stop_at: int | None = None
) -> TrainResult:
    """Train as `config` says and return the model, the metrics and the output folder.

    resume: continue the run whose checkpoint is in config.out_dir, on the same loss
    curve as if it had never stopped (same batches, schedule and optimizer state); the
    model settings must be the saved ones. Without it, an out_dir that already holds a
    checkpoint is an error, so that a finished run is never overwritten by accident.
    stop_at: end this session after that many steps in total (checkpointed, resumable)
    without changing the schedule, which still spans max_steps; e.g. to fit a run into
    time-limited sessions. One training at a time writes into an out_dir
    (own_run_folder).
    """
    with own_run_folder(Path(config.out_dir)):
        run = start_run(config, resume)
        config, step = run.config, run.start
        end = max(
            step,
            min(config.max_steps, config.max_steps if stop_at is None else stop_at),
        )
        print_banner(run, end)
        meter = Meter(config.batch_size * config.block_size)
        with stop_on_signals() as stop:
            for step in range(run.start, end):
                # every process stops at the same step
                if distributed.any_rank(stop["stop"] is not None, run.device):
                    break
                if step % config.eval_interval == 0:
                    with meter.paused():
                        log_eval(run, step)
                if step > run.start and step % config.checkpoint_interval == 0:
                    with meter.paused():
                        stop_if_diverged(run, step - 1, meter.finite())
                        save(run, step)
                lr = one_cycle_lr(
                    step, config.max_steps, config.lr, config.min_lr, config.warmup_frac
                )
                set_lr(run.optimizer, lr)
                monitor_now = step % config.monitor_interval == 0
                stats = train_step(
                    run,
                    batch_at(step, run.corpus.train, config, run.device),
                    monitor_now,
                )
                meter.add(stats)
                if monitor_now:
                    run.log(monitor_record(step, stats))
                if (step + 1) % config.log_interval == 0 or step + 1 == end:
                    record = meter.record(step, lr, run)
                    log_train(run, record)
                    stop_if_diverged(
                        run, step, math.isfinite(record["loss"] + record["grad_norm"])
                    )
            else:
                step = end
            interrupted = distributed.any_rank(stop["stop"] is not None, run.device)
        stop_if_diverged(run, step - 1, meter.finite())
        if step == config.max_steps:
            log_eval(run, step)
        save(run, step)
        run.bar.close()
        if distributed.is_main():
            if interrupted:
                print(
                    f"Interrupted at step {step}: checkpoint saved. Continue with\n"
                    f"  python -m qwen_minimal train --out_dir {run.out_dir} --resume",
                    file=sys.stderr,
                )
            print(f"Saved checkpoint, metrics.jsonl and analytics/ in\n  {run.out_dir}")
        return TrainResult(
            run.model,
            config,
            run.metrics.records if run.metrics else [],
            run.out_dir,
            step,
            interrupted,
            run.corpus.tokenizer,
            (stop["stop"] or signal.SIGINT) if interrupted else None,
        )


# --------------------------------------------------------------------- setting up a run


@dataclass
class Run:
    """What a training session holds: its settings, data, model, optimizer and where it
    writes."""

    config: TrainConfig
    device: torch.device
    corpus: Corpus
    # fp32 master weights (this process's part of them, with fsdp or expert_parallel)
    model: QwenLM
    # the model as the processes share it (distributed.parallelize): DDP, or model
    parallel_model: torch.nn.Module
    # parallel_model as training steps call it: compiled, or itself
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    autocast: object  # the context that each forward pass runs in
    # None on all processes but the first: only rank 0 writes
    metrics: monitoring.MetricsLog | None
    start: int  # the first step of this session
    bar: tqdm

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def log(self, record: dict, line: str | None = None) -> None:
        """Rank 0 appends the record to metrics.jsonl and prints the line; the other
        processes stay quiet."""
        if self.metrics is not None:
            self.metrics.log(record)
            if line is not None:
                self.bar.write(line)


LOCK_FILE = ".train.lock"
METRICS_FILE = "metrics.jsonl"


@contextmanager
def own_run_folder(out_dir: Path):
    """Hold out_dir for this training, so that a second one into the same folder stops
    with one line instead of the two overwriting each other's checkpoint. The lock is
    an flock on an open file: the system releases it when the process ends, however it
    ends, so a crash never leaves the folder locked. Under torchrun rank 0 holds it for
    all (before the processes join, RANK is the only way to tell which is rank 0)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path = out_dir / LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = path.open("a+")
    except OSError as e:
        raise cannot_write(path, e) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise InputError(
                f"{out_dir} is in use by another training (pid {holder}), which "
                "writes its checkpoint there: wait for it to finish or choose another "
                "--out_dir"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def start_run(config: TrainConfig, resume: bool) -> Run:
    """Data, model and optimizer for `config`; with resume, restored from the checkpoint
    in out_dir."""
    out_dir = Path(config.out_dir)
    # checkpoint.old is a complete checkpoint if a save died between its two renames
    if not resume and any(
        (out_dir / (checkpoint.CHECKPOINT_DIR + suffix)).exists()
        for suffix in ("", checkpoint.OLD)
    ):
        raise InputError(
            f"{out_dir} already holds a checkpoint: pass --resume (resume=True) to "
            "continue that "
            f"run, or choose another --out_dir, or delete {out_dir}"
        )
    # a damaged checkpoint fails now, not after the corpus is tokenized (minutes, the
    # first time)
    if resume:
        checkpoint.check_resumable(out_dir)
    # under torchrun: joins the other processes
    device = distributed.start(config.device)
    distributed.check_batch(config.batch_size, config.grad_accum_steps)
    # rank 0 tokenizes into the cache, the others then read it
    with distributed.main_first():
        corpus = load_corpus(config.data, config.tokenizer)
    # the model's vocabulary is the tokenizer's
    if config.model.vocab_size != corpus.vocab_size:
        config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, vocab_size=corpus.vocab_size),
        )
    torch.manual_seed(config.seed)  # the same initial weights in every process
    # fp32 master weights; autocast computes in bf16
    model = QwenLM(config.model).to(device)
    if resume:
        restore_weights(config, model)
    parallel_model = distributed.parallelize(
        model, config.parallel, config.expert_parallel
    )
    optimizer = make_optimizer(
        model, config.lr, (config.beta1, config.beta2), config.weight_decay, device
    )
    start = 0
    # now that the processes share the model, each takes its part of the saved optimizer
    # state
    if resume:
        start = checkpoint.load_optimizer_state(
            out_dir, optimizer, partial(distributed.load_optimizer_state, model)
        )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.dtype == "bfloat16"
        else nullcontext()
    )
    main = distributed.is_main()
    metrics = (
        monitoring.MetricsLog(
            out_dir / METRICS_FILE, keep_before=start if resume else None
        )
        if main
        else None
    )
    return Run(
        config,
        device,
        corpus,
        model,
        parallel_model,
        torch.compile(parallel_model) if config.compile else parallel_model,
        optimizer,
        autocast,
        metrics,
        start,
        tqdm(
            total=config.max_steps,
            initial=start,
            disable=not (config.progress and main),
            dynamic_ncols=True,
            desc="train",
        ),
    )


def restore_weights(config: TrainConfig, model: QwenLM) -> None:
    """Load the weights of the checkpoint in config.out_dir into model, after checking
    that it is of the same model; say which training settings differ from the saved
    ones. (The optimizer state follows once the processes share the model:
    distributed.load_optimizer_state.)"""
    saved = checkpoint.read_config(config.out_dir)
    asked = config.model.to_dict()
    saved_model = checkpoint.model_config(config.out_dir).to_dict()
    if saved_model != asked:
        diff = {k: (v, asked[k]) for k, v in saved_model.items() if asked[k] != v}
        raise InputError(
            f"the checkpoint in {config.out_dir} is of another model, (saved, asked) "
            f"= {diff}: "
            "resume with the same model settings, or start a new run in another "
            "out_dir"
        )
    changed = {
        k: (v, getattr(config, k))
        for k, v in (saved["train"] or {}).items()
        if k != "model" and v != getattr(config, k, v)
    }
    checkpoint.load_weights(model, config.out_dir)
    if distributed.is_main():
        print(
            f"Resuming {config.out_dir} at step {saved['step']}"
            + (f"; changed settings (saved, now): {changed}" if changed else "")
        )


def print_banner(run: Run, end: int) -> None:
    """What is trained on what, in short lines (a terminal or a notebook column of ~88
    characters)."""
    if not distributed.is_main():
        return
    c, model, processes = run.config, run.model, distributed.world_size()
    text, *rest = run.corpus.source.split("; ")
    print(f"Data: {text}" + "".join(f"\n      {part}" for part in rest))
    print(
        f"Model: {model.num_parameters():,} parameters, "
        f"{model.num_parameters(active=True):,} active per token,\n"
        f"       {model.flops_per_token(c.block_size, training=True) / 1e6:.1f} "
        "MFLOP per token per training step"
    )
    sharing = (
        ""
        if processes == 1
        else (
            f" x {processes} processes ({c.parallel}"
            f"{', experts spread over them' if c.expert_parallel else ''})"
        )
    )
    print(
        f"Training on {describe(run.device)}{sharing} "
        f"({c.dtype}{', compiled' if c.compile else ''}),\n"
        f"       steps {run.start} -> {end} of {c.max_steps}, "
        f"{c.batch_size * c.block_size:,} tokens per step"
    )
    print(f"Output: {run.out_dir}")


# ----------------------------------------------------------------------------- one step


def batch_at(
    step: int, data, config: TrainConfig, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of the training batch of `step` (all of it in one process).
    The batch is a function of (seed, step) alone, so a resumed run sees exactly the
    batches the uninterrupted run would have seen, and every process draws the same one
    and keeps its rows (distributed.rank_rows)."""
    generator = torch.Generator().manual_seed((config.seed << 32) + step)
    batch = random_blocks(
        data, config.batch_size, config.block_size, generator=generator, device=device
    )
    return tuple(distributed.rank_rows(t, config.grad_accum_steps) for t in batch)


@dataclass
class StepStats:
    lm_loss: torch.Tensor  # mean over the micro-batches, on the device (no sync)
    # the balancing loss trained on (None: dense, or bias balancing)
    aux_loss: torch.Tensor | None
    grad_norm: torch.Tensor  # before clipping
    # [L, E] summed over the micro-batches and processes
    tokens_per_expert: torch.Tensor | None
    grad_norms: dict | None = (
        None  # monitoring steps only: per layer, attention and feed-forward
    )
    activations: list | None = (
        None  # monitoring steps only: (mean, std) of every block's output
    )


def train_step(
    run: Run, batch: tuple[torch.Tensor, torch.Tensor], monitor: bool
) -> StepStats:
    """Forward and backward over the batch in grad_accum_steps micro-batches, then clip
    and take one AdamW step (and, for bias balancing, move the selection biases).
    Monitoring steps run the uncompiled model, so that its hooks never make
    torch.compile retrace. With several processes, each runs its part of every
    micro-batch; the gradients are averaged after the last one, and the expert counts
    summed after each."""
    config, model = run.config, run.model
    n, coef = config.grad_accum_steps, config.model.router_aux_loss_coef
    # load: [L, E] assignments per expert in this step so far, every process's
    lm, aux, load = (
        0.0,
        None,
        None,
    )
    with (
        monitoring.record_activations(model)
        if monitor
        else nullcontext() as activations
    ):
        for i, (x, y) in enumerate(zip(*(t.chunk(n) for t in batch))):
            with distributed.gradient_sync(run.parallel_model, last=i == n - 1):
                with run.autocast:
                    out = (run.parallel_model if monitor else run.step_model)(x, y)
                if out.routing is not None:
                    counts = distributed.sum_over_ranks(out.tokens_per_expert)
                    load = counts if load is None else load + counts
                balance = balancing.training_loss(config.model, out, load)
                loss = out.lm_loss if balance is None else out.lm_loss + coef * balance
                (loss / n).backward()
            lm = lm + out.lm_loss.detach() / n
            if balance is not None:
                aux = (0.0 if aux is None else aux) + balance.detach() / n
    grad_norms = monitoring.layer_grad_norms(model) if monitor else None
    norm = distributed.clip_grad_norm(model, config.grad_clip or float("inf"))
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    # (a dense model has no experts to balance)
    if config.model.load_balancing == "bias" and load is not None:
        balancing.update_bias(model, load)
    # the first micro-batch's activation statistics (of this process's part of it): one
    # (mean, std) per block
    return StepStats(
        lm,
        aux,
        norm.detach(),
        load,
        grad_norms,
        activations[: config.model.num_layers] if monitor else None,
    )


# -----------------------------------------------------------------------------
# measuring and saving


class Meter:
    """Averages of the training statistics since the last log line, and the throughput
    over the time spent in training steps (evaluation and checkpoints, run inside
    paused(), do not count)."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.reset()

    def reset(self) -> None:
        self.steps, self.lm, self.aux, self.norm = 0, 0.0, None, 0.0
        self.started, self.excluded = time.perf_counter(), 0.0

    def add(self, stats: StepStats) -> None:
        self.steps += 1
        self.lm, self.norm = self.lm + stats.lm_loss, self.norm + stats.grad_norm
        if stats.aux_loss is not None:
            self.aux = (0.0 if self.aux is None else self.aux) + stats.aux_loss

    def finite(self) -> bool:
        """Whether the losses and gradient norms since the last log line are all finite
        (a nan or inf in any of them makes their sum so); syncs with the device."""
        sums = [self.lm, self.norm] + ([] if self.aux is None else [self.aux])
        return math.isfinite(sum(float(v) for v in sums))

    @contextmanager
    def paused(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - started

    def record(self, step: int, lr: float, run: Run) -> dict:
        """The train record of the window that ends at `step`, and a new window."""
        n = self.steps
        # the first device sync since the last log
        lm = float(distributed.mean_over_ranks(self.lm)) / n
        seconds = time.perf_counter() - self.started - self.excluded
        record = {
            "kind": "train",
            "step": step,
            "loss": lm,
            "lm_loss": lm,
            "lr": lr,
            "grad_norm": float(self.norm) / n,
            "tokens_per_s": n * self.tokens_per_step / seconds,
        }
        if self.aux is not None:
            record["aux_loss"] = float(distributed.mean_over_ranks(self.aux)) / n
            record["loss"] = (
                lm + run.config.model.router_aux_loss_coef * record["aux_loss"]
            )
        peak = peak_flops(run.device) if run.config.dtype == "bfloat16" else None
        if peak:
            # of all the GPUs' peak
            record["mfu"] = (
                record["tokens_per_s"]
                * run.model.flops_per_token(run.config.block_size, True)
                / (peak * distributed.world_size())
            )
        # the allocator's high-water mark since the start of the run
        if run.device.type == "cuda":
            record["peak_memory_gib"] = (
                torch.cuda.max_memory_allocated(run.device) / 2**30
            )
        self.reset()
        return record


def monitor_record(step: int, stats: StepStats) -> dict:
    record = {
        "kind": "monitor",
        "step": step,
        "grad_norm_attn": stats.grad_norms["attn"],
        "grad_norm_ffn": stats.grad_norms["ffn"],
        "act_mean": [m.item() for m, _ in stats.activations],
        "act_std": [s.item() for _, s in stats.activations],
    }
    # this step's whole batch: a resumed run measures exactly what it would have
    load = stats.tokens_per_expert
    if load is not None:
        record.update(
            tokens_per_expert=load.tolist(),
            kl_uniform=monitoring.kl_to_uniform(load).tolist(),
            kl_mean_load=monitoring.kl_of_mean_load(load),
            max_violation=monitoring.max_violation(load).tolist(),
        )
    return record


@torch.no_grad()
def evaluate(
    model: QwenLM,
    data,
    batch_size: int,
    block_size: int,
    device,
    autocast=nullcontext(),
    max_batches: int | None = None,
) -> float:
    """Mean next-token cross-entropy over the first max_batches batches of consecutive
    blocks (always the same text, so successive evaluations are comparable). With
    several processes each evaluates its rows of every batch (distributed.eval_rows),
    and the sums are added up."""
    model.eval()
    total, count = (
        torch.zeros((), device=device, dtype=torch.float64),
        torch.zeros((), device=device),
    )
    for x, y in sequential_blocks(
        data, batch_size, block_size, device, max_batches=max_batches
    ):
        x, y, counted = distributed.eval_rows(x, y)
        with autocast:
            loss = model(x, y).lm_loss.double()
        if counted:
            total, count = total + loss * y.numel(), count + y.numel()
    model.train()
    return (
        distributed.sum_over_ranks(total) / distributed.sum_over_ranks(count)
    ).item()


def log_eval(run: Run, step: int) -> None:
    c = run.config
    val_loss = evaluate(
        run.model,
        run.corpus.validation,
        c.batch_size // c.grad_accum_steps,
        c.block_size,
        run.device,
        run.autocast,
        c.eval_batches,
    )
    run.log(
        {
            "kind": "eval",
            "step": step,
            "val_loss": val_loss,
            "val_ppl": math.exp(val_loss),
        },
        f"step {step:6d} | validation loss {val_loss:.4f} | perplexity "
        f"{math.exp(val_loss):,.1f}",
    )


def log_train(run: Run, r: dict) -> None:
    line = f"step {r['step']:6d} | loss {r['lm_loss']:.4f}"
    if "aux_loss" in r:
        line += f" | aux {r['aux_loss']:.3f}"
    line += (
        f" | lr {r['lr']:.2e} | grad norm {r['grad_norm']:.2f} | "
        f"{r['tokens_per_s']:,.0f} tok/s"
    )
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    if "peak_memory_gib" in r:
        line += f" | peak memory {r['peak_memory_gib']:.1f} GiB"
    run.log(r, line)
    run.bar.set_postfix(loss=f"{r['lm_loss']:.3f}", lr=f"{r['lr']:.1e}")


def stop_if_diverged(run: Run, step: int, finite: bool) -> None:
    """InputError if the loss or the gradient norm has become nan or inf on any process
    by `step` (as the log lines number steps; `finite` is this process's verdict),
    before anything is saved: the last good
    checkpoint is kept. To add no device sync of its own, the loop checks at every log
    line (where the Meter syncs anyway) and before every save; so a divergence is
    noticed up to log_interval steps late, but NaN weights are never saved."""
    if not distributed.any_rank(not finite, run.device):
        return
    c = run.config
    try:
        saved = checkpoint.read_config(run.out_dir)["step"]
        kept = (
            f"the last good checkpoint (step {saved}) is kept in {run.out_dir}, to "
            "continue from with --resume"
        )
    except InputError:
        kept = "no checkpoint was saved"
    raise InputError(
        f"training diverged: the loss or gradient norm is nan or inf by step {step}; "
        f"{kept}. Try a lower --lr (now {c.lr:g})"
        + ("" if c.dtype == "float32" else ", --dtype float32")
        + (
            f" or a lower --grad_clip (now {c.grad_clip:g})"
            if c.grad_clip
            else " or gradient clipping (--grad_clip 1.0)"
        )
    )


def save(run: Run, step: int) -> None:
    """The checkpoint, as one process would save it whatever the number of processes
    (gathered on rank 0, which writes it), and the plots."""
    model, optimizer_state = distributed.gathered_state(run.model, run.optimizer)
    if not distributed.is_main():
        return
    # the model's go on top
    train_settings = {k: v for k, v in run.config.to_dict().items() if k != "model"}
    checkpoint.save_checkpoint(
        run.out_dir,
        model,
        step,
        train_config=train_settings,
        tokenizer=run.corpus.tokenizer,
        optimizer=optimizer_state,
    )
    try:
        plots.save_plots(run.metrics.records, run.out_dir / "analytics")
    except OSError as e:
        raise cannot_write(run.out_dir / "analytics", e) from None


# what each stop signal is called in the line that says the run is stopping
STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


@contextmanager
def stop_on_signals():
    """The first Ctrl-C (SIGINT) or SIGTERM (what `kill`, a job scheduler or a container
    stop sends) only sets flag["stop"] to the signal's number: the loop then finishes
    its step, saves a checkpoint and stops. Stopping between two steps keeps weights,
    optimizer and step consistent, which an exception in the middle of optimizer.step()
    would not. A second signal stops at once."""
    flag = {"stop": None}
    # signals reach the main thread only
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        flag["stop"] = signum
        if distributed.is_main():  # (torchrun passes the signal on to every process)
            print(
                f"\n{STOP_SIGNALS[signum]}: stopping after this step and saving a "
                "checkpoint (send it again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
