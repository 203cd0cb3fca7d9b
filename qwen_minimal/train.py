"""Training: `python -m qwen_minimal.train --preset cpu-tiny` from a shell, or from Python

    from qwen_minimal.train import TrainConfig, train
    result = train(TrainConfig.preset("cpu-tiny", max_steps=100, model=dict(num_layers=2)))

The objective is next-token cross-entropy plus router_aux_loss_coef times the load-balancing loss,
minimised by AdamW under a one-cycle cosine learning-rate schedule (optim.py), with gradient clipping,
bfloat16 autocast around fp32 master weights, and optionally torch.compile. Everything a run writes goes to
out_dir: the checkpoint (checkpoint.py), metrics.jsonl (monitoring.py) and analytics/*.png (plots.py).

    torchrun --nproc_per_node N -m qwen_minimal.train --preset ...

trains on N processes, the same run as in one process (distributed.py): data parallel (DDP) by default, sharded
with --parallel fsdp, with the experts spread over the processes with --expert_parallel true.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from . import balancing, checkpoint, distributed, monitoring, plots
from .cli import add_field_options, exit_on_input_error, reject_unknown
from .config import ModelConfig
from .data import Corpus, load_corpus, random_blocks, sequential_blocks
from .devices import describe, peak_flops
from .errors import InputError, check_at_least, check_known_fields
from .model import QwenLM
from .optim import BETAS, WEIGHT_DECAY, make_optimizer, one_cycle_lr, set_lr


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Data. None follows qwen_minimal.data: $QWEN_MINIMAL_DATA / $QWEN_MINIMAL_TOKENIZER, then the hub.
    data: str | None = field(default=None, metadata={"help": "text folder/file or hub WikiText config"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer folder or hub name"})
    batch_size: int = field(default=128, metadata={"help": "sequences per optimizer step"})
    grad_accum_steps: int = field(default=1, metadata={
        "help": "split each step's batch into this many micro-batches: less memory, same batch"})
    block_size: int = field(default=256, metadata={"help": "tokens per training sequence"})
    max_steps: int = field(default=6000, metadata={"help": "optimizer steps; the lr schedule spans them"})
    # AdamW and the one-cycle cosine schedule.
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the first and the last step"})
    warmup_frac: float = field(default=0.1, metadata={"help": "fraction of the steps spent rising to lr"})
    beta1: float = BETAS[0]
    beta2: float = BETAS[1]
    weight_decay: float = field(default=WEIGHT_DECAY, metadata={
        "help": "decoupled weight decay on matrices (ndim >= 2); none on norm gains and biases"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm; 0 disables clipping"})
    # Measuring and saving.
    eval_interval: int = field(default=250, metadata={"help": "steps between validation passes"})
    eval_batches: int | None = field(default=None, metadata={
        "help": "validation batches per pass; None: the whole validation split"})
    log_interval: int = field(default=10, metadata={"help": "steps between training log lines"})
    monitor_interval: int = field(default=100, metadata={
        "help": "steps between gradient-norm / activation / expert-load measurements"})
    checkpoint_interval: int = field(default=500, metadata={"help": "steps between checkpoints (and plots)"})
    out_dir: str = field(default="runs/wikitext103", metadata={"help": "folder for checkpoint, metrics, plots"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    # Hardware.
    device: str = field(default="auto", metadata={"help": "auto (cuda > mps > cpu), cuda, cuda:1, mps or cpu"})
    dtype: str = field(default="bfloat16", metadata={
        "help": "autocast dtype: bfloat16 (weights stay fp32) or float32"})
    compile: bool = field(default=True, metadata={"help": "torch.compile the model for training steps"})
    parallel: str = field(default="ddp", metadata={
        "help": "under torchrun, how the processes share the model: each holds all of it (ddp), or 1/N of every "
                "weight, gradient and AdamW moment (fsdp)", "choices": distributed.PARALLEL})
    expert_parallel: bool = field(default=False, metadata={
        "help": "under torchrun, with parallel=ddp: each process holds num_experts / N experts of every MoE layer"})
    seed: int = field(default=1337, metadata={"help": "seeds the initialisation and the data order"})

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        check_at_least(1, **{name: getattr(self, name) for name in (
            "batch_size", "grad_accum_steps", "block_size", "max_steps", "eval_interval", "log_interval",
            "monitor_interval", "checkpoint_interval")})
        check_at_least(0, seed=self.seed)
        if self.batch_size % self.grad_accum_steps:
            raise InputError(f"batch_size={self.batch_size} is not divisible by grad_accum_steps="
                             f"{self.grad_accum_steps}: each micro-batch must have the same size")
        if self.block_size > self.model.max_seq_len:
            raise InputError(f"block_size={self.block_size} exceeds the model's max_seq_len="
                             f"{self.model.max_seq_len}: lower block_size or raise model.max_seq_len")
        if not 0 <= self.warmup_frac < 1:
            raise InputError(f"warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 < self.min_lr <= self.lr:
            raise InputError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.dtype not in ("bfloat16", "float32"):
            raise InputError(f"dtype={self.dtype!r}: choose 'bfloat16' or 'float32'")
        if self.parallel not in distributed.PARALLEL:
            raise InputError(f"parallel={self.parallel!r}: choose one of {', '.join(distributed.PARALLEL)}")
        if self.expert_parallel and (self.parallel != "ddp" or not self.model.use_moe):
            raise InputError("expert_parallel=true spreads the experts of a MoE model (model.use_moe=true) over the "
                             "processes and keeps the rest data parallel: use it with parallel=ddp")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        check_known_fields(cls, values)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        """A preset of TRAIN_PRESETS with fields overridden; `model` may be a dict of ModelConfig
        overrides (applied to the preset's model) or a ModelConfig."""
        if name not in TRAIN_PRESETS:
            raise InputError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
        values = dict(TRAIN_PRESETS[name])
        model = overrides.pop("model", {})
        check_known_fields(cls, overrides)
        if not isinstance(model, ModelConfig):
            model = ModelConfig.preset(values["model"], **model)
        return cls(**{**values, **overrides, "model": model})

    @classmethod
    def from_run(cls, out_dir: str | Path, model: dict | None = None, **overrides) -> TrainConfig:
        """The settings a run in out_dir was trained with, with the given fields changed: what --resume runs."""
        saved = checkpoint.read_config(out_dir)
        train_settings = {**(saved["train"] or {}), "out_dir": str(out_dir)}
        try:  # the saved settings alone first, so that an error in them names the file and not the options
            cls.from_dict({**train_settings, "model": ModelConfig.from_dict(saved["model"])})
        except (InputError, TypeError) as e:
            raise InputError(f"{checkpoint.find_checkpoint(out_dir) / checkpoint.CONFIG} holds training settings "
                             f"that cannot be used ({e}): fix that file, or start a new run in another "
                             f"--out_dir") from None
        check_known_fields(cls, overrides)
        model_config = ModelConfig.from_dict({**saved["model"], **(model or {})})
        return cls.from_dict({**train_settings, **overrides, "out_dir": str(out_dir), "model": model_config})


TRAIN_PRESETS: dict[str, dict] = {
    # The original run: 6,000 steps of 128 x 256 tokens on one 80 GB GPU, bf16 autocast, torch.compile.
    "wikitext103": dict(model="wikitext103", out_dir="runs/wikitext103"),
    # Visibly learns on a 2-core CPU in about a minute: small batches, a high learning rate, fp32, no compile.
    "cpu-tiny": dict(model="cpu-tiny", batch_size=8, block_size=64, max_steps=100, lr=3e-3, min_lr=1e-4,
                     eval_interval=20, eval_batches=4, log_interval=10, monitor_interval=10,
                     checkpoint_interval=100, dtype="float32", compile=False, out_dir="runs/cpu-tiny"),
}


@dataclass
class TrainResult:
    model: QwenLM              # the trained model (fp32 weights, on the training device)
    config: TrainConfig        # as run, with model.vocab_size set to the tokenizer's
    history: list[dict]        # every record of out_dir/metrics.jsonl (see monitoring.py)
    out_dir: Path
    step: int                  # optimizer steps done
    interrupted: bool          # stopped by Ctrl-C (a checkpoint was saved)
    tokenizer: object = None


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, resume: bool = False, stop_at: int | None = None) -> TrainResult:
    """Train as `config` says and return the model, the metrics and the output folder.

    resume: continue the run whose checkpoint is in config.out_dir, on the same loss curve as if it had
      never stopped (same batches, schedule and optimizer state); the model settings must be the saved ones.
      Without it, an out_dir that already holds a checkpoint is an error, so that a finished run is never
      overwritten by accident.
    stop_at: end this session after that many steps in total (checkpointed, resumable) without changing
      the schedule, which still spans max_steps; e.g. to fit a run into time-limited sessions.
    """
    run = start_run(config, resume)
    config, step = run.config, run.start
    end = max(step, min(config.max_steps, config.max_steps if stop_at is None else stop_at))
    print_banner(run, end)
    meter = Meter(config.batch_size * config.block_size)
    with stop_on_ctrl_c() as ctrl_c:
        for step in range(run.start, end):
            if distributed.any_rank(ctrl_c["stop"], run.device):  # every process stops at the same step
                break
            if step % config.eval_interval == 0:
                with meter.paused():
                    log_eval(run, step)
            if step > run.start and step % config.checkpoint_interval == 0:
                with meter.paused():
                    save(run, step)
            lr = one_cycle_lr(step, config.max_steps, config.lr, config.min_lr, config.warmup_frac)
            set_lr(run.optimizer, lr)
            monitor_now = step % config.monitor_interval == 0
            stats = train_step(run, batch_at(step, run.corpus.train, config, run.device), monitor_now)
            meter.add(stats)
            if monitor_now:
                run.log(monitor_record(step, stats))
            if (step + 1) % config.log_interval == 0 or step + 1 == end:
                log_train(run, meter.record(step, lr, run))
        else:
            step = end
        interrupted = distributed.any_rank(ctrl_c["stop"], run.device)
    if step == config.max_steps:
        log_eval(run, step)
    save(run, step)
    run.bar.close()
    if distributed.is_main():
        if interrupted:
            print(f"Interrupted at step {step}: checkpoint saved. Continue with\n"
                  f"  python -m qwen_minimal.train --out_dir {run.out_dir} --resume", file=sys.stderr)
        print(f"Saved checkpoint, metrics.jsonl and analytics/ in\n  {run.out_dir}")
    return TrainResult(run.model, config, run.metrics.records if run.metrics else [], run.out_dir, step,
                       interrupted, run.corpus.tokenizer)


# ----------------------------------------------------------------------------- setting up a run


@dataclass
class Run:
    """What a training session holds: its settings, data, model, optimizer and where it writes."""
    config: TrainConfig
    device: torch.device
    corpus: Corpus
    model: QwenLM               # fp32 master weights (this process's part of them, with fsdp or expert_parallel)
    parallel_model: torch.nn.Module  # the model as the processes share it (distributed.parallelize): DDP, or model
    step_model: torch.nn.Module  # parallel_model as training steps call it: compiled, or itself
    optimizer: torch.optim.Optimizer
    autocast: object            # the context that each forward pass runs in
    metrics: monitoring.MetricsLog | None  # None on all processes but the first: only rank 0 writes
    start: int                  # the first step of this session
    bar: tqdm

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def log(self, record: dict, line: str | None = None) -> None:
        """Rank 0 appends the record to metrics.jsonl and prints the line; the other processes stay quiet."""
        if self.metrics is not None:
            self.metrics.log(record)
            if line is not None:
                self.bar.write(line)


def start_run(config: TrainConfig, resume: bool) -> Run:
    """Data, model and optimizer for `config`; with resume, restored from the checkpoint in out_dir."""
    out_dir = Path(config.out_dir)
    if not resume and (out_dir / checkpoint.CHECKPOINT_DIR).exists():
        raise InputError(f"{out_dir} already holds a checkpoint: pass --resume (resume=True) to continue that "
                         f"run, or choose another --out_dir, or delete {out_dir}")
    if resume:  # a damaged checkpoint fails now, not after the corpus is tokenized (minutes, the first time)
        checkpoint.check_resumable(out_dir)
    device = distributed.start(config.device)  # under torchrun: joins the other processes
    distributed.check_batch(config.batch_size, config.grad_accum_steps)
    with distributed.main_first():  # rank 0 tokenizes into the cache, the others then read it
        corpus = load_corpus(config.data, config.tokenizer)
    if config.model.vocab_size != corpus.vocab_size:  # the model's vocabulary is the tokenizer's
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=corpus.vocab_size))
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = QwenLM(config.model).to(device)  # fp32 master weights; autocast computes in bf16
    if resume:
        restore_weights(config, model)
    parallel_model = distributed.parallelize(model, config.parallel, config.expert_parallel)
    optimizer = make_optimizer(model, config.lr, (config.beta1, config.beta2), config.weight_decay, device)
    start = 0
    if resume:  # now that the processes share the model, each takes its part of the saved optimizer state
        start = checkpoint.load_optimizer_state(out_dir, optimizer, partial(distributed.load_optimizer_state, model))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16" else nullcontext()
    main = distributed.is_main()
    metrics = monitoring.MetricsLog(out_dir / "metrics.jsonl", keep_before=start if resume else None) if main else None
    return Run(config, device, corpus, model, parallel_model,
               torch.compile(parallel_model) if config.compile else parallel_model, optimizer, autocast, metrics, start,
               tqdm(total=config.max_steps, initial=start, disable=not (config.progress and main), dynamic_ncols=True,
                    desc="train"))


def restore_weights(config: TrainConfig, model: QwenLM) -> None:
    """Load the weights of the checkpoint in config.out_dir into model, after checking that it is of the same model;
    say which training settings differ from the saved ones. (The optimizer state follows once the processes
    share the model: distributed.load_optimizer_state.)"""
    saved = checkpoint.read_config(config.out_dir)
    asked = config.model.to_dict()
    saved_model = checkpoint.model_config(config.out_dir).to_dict()
    if saved_model != asked:
        diff = {k: (v, asked[k]) for k, v in saved_model.items() if asked[k] != v}
        raise InputError(f"the checkpoint in {config.out_dir} is of another model, (saved, asked) = {diff}: "
                         f"resume with the same model settings, or start a new run in another out_dir")
    changed = {k: (v, getattr(config, k)) for k, v in (saved["train"] or {}).items()
               if k != "model" and v != getattr(config, k, v)}
    checkpoint.load_weights(model, config.out_dir)
    if distributed.is_main():
        print(f"Resuming {config.out_dir} at step {saved['step']}"
              + (f"; changed settings (saved, now): {changed}" if changed else ""))


def print_banner(run: Run, end: int) -> None:
    """What is trained on what, in short lines (a terminal or a notebook column of ~88 characters)."""
    if not distributed.is_main():
        return
    c, model, processes = run.config, run.model, distributed.world_size()
    text, *rest = run.corpus.source.split("; ")
    print(f"Data: {text}" + "".join(f"\n      {part}" for part in rest))
    print(f"Model: {model.num_parameters():,} parameters, {model.num_parameters(active=True):,} active per token,\n"
          f"       {model.flops_per_token(c.block_size, training=True) / 1e6:.1f} MFLOP per token per training step")
    sharing = "" if processes == 1 else (f" x {processes} processes ({c.parallel}"
                                         f"{', experts spread over them' if c.expert_parallel else ''})")
    print(f"Training on {describe(run.device)}{sharing} ({c.dtype}{', compiled' if c.compile else ''}),\n"
          f"       steps {run.start} -> {end} of {c.max_steps}, {c.batch_size * c.block_size:,} tokens per step")
    print(f"Output: {run.out_dir}")


# ----------------------------------------------------------------------------- one step


def batch_at(step: int, data, config: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's part of the training batch of `step` (all of it in one process). The batch is a function of
    (seed, step) alone, so a resumed run sees exactly the batches the uninterrupted run would have seen, and every
    process draws the same one and keeps its rows (distributed.rank_rows)."""
    generator = torch.Generator().manual_seed((config.seed << 32) + step)
    batch = random_blocks(data, config.batch_size, config.block_size, generator=generator, device=device)
    return tuple(distributed.rank_rows(t, config.grad_accum_steps) for t in batch)


@dataclass
class StepStats:
    lm_loss: torch.Tensor                    # mean over the micro-batches, on the device (no sync)
    aux_loss: torch.Tensor | None            # the balancing loss trained on (None: dense, or bias balancing)
    grad_norm: torch.Tensor                  # before clipping
    tokens_per_expert: torch.Tensor | None   # [L, E] summed over the micro-batches and processes
    grad_norms: dict | None = None           # monitoring steps only: per layer, attention and feed-forward
    activations: list | None = None          # monitoring steps only: (mean, std) of every block's output


def train_step(run: Run, batch: tuple[torch.Tensor, torch.Tensor], monitor: bool) -> StepStats:
    """Forward and backward over the batch in grad_accum_steps micro-batches, then clip and take one AdamW
    step (and, for bias balancing, move the selection biases). Monitoring steps run the uncompiled model, so that
    its hooks never make torch.compile retrace. With several processes, each runs its part of every micro-batch;
    the gradients are averaged after the last one, and the expert counts summed after each."""
    config, model = run.config, run.model
    n, coef = config.grad_accum_steps, config.model.router_aux_loss_coef
    lm, aux, load = 0.0, None, None  # load: [L, E] assignments per expert in this step so far, every process's
    with monitoring.record_activations(model) if monitor else nullcontext() as activations:
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
    if config.model.load_balancing == "bias" and load is not None:  # (a dense model has no experts to balance)
        balancing.update_bias(model, load)
    # the first micro-batch's activation statistics (of this process's part of it): one (mean, std) per block
    return StepStats(lm, aux, norm.detach(), load, grad_norms,
                     activations[:config.model.num_layers] if monitor else None)


# ----------------------------------------------------------------------------- measuring and saving


class Meter:
    """Averages of the training statistics since the last log line, and the throughput over the time spent in
    training steps (evaluation and checkpoints, run inside paused(), do not count)."""

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
        lm = float(distributed.mean_over_ranks(self.lm)) / n  # the first device sync since the last log
        seconds = time.perf_counter() - self.started - self.excluded
        record = {"kind": "train", "step": step, "loss": lm, "lm_loss": lm, "lr": lr,
                  "grad_norm": float(self.norm) / n, "tokens_per_s": n * self.tokens_per_step / seconds}
        if self.aux is not None:
            record["aux_loss"] = float(distributed.mean_over_ranks(self.aux)) / n
            record["loss"] = lm + run.config.model.router_aux_loss_coef * record["aux_loss"]
        peak = peak_flops(run.device) if run.config.dtype == "bfloat16" else None
        if peak:
            record["mfu"] = (record["tokens_per_s"] * run.model.flops_per_token(run.config.block_size, True)
                             / (peak * distributed.world_size()))  # of all the GPUs' peak
        if run.device.type == "cuda":  # the allocator's high-water mark since the start of the run
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        self.reset()
        return record


def monitor_record(step: int, stats: StepStats) -> dict:
    record = {"kind": "monitor", "step": step, "grad_norm_attn": stats.grad_norms["attn"],
              "grad_norm_ffn": stats.grad_norms["ffn"],
              "act_mean": [m.item() for m, _ in stats.activations], "act_std": [s.item() for _, s in stats.activations]}
    load = stats.tokens_per_expert  # this step's whole batch: a resumed run measures exactly what it would have
    if load is not None:
        record.update(tokens_per_expert=load.tolist(), kl_uniform=monitoring.kl_to_uniform(load).tolist(),
                      kl_mean_load=monitoring.kl_of_mean_load(load),
                      max_violation=monitoring.max_violation(load).tolist())
    return record


@torch.no_grad()
def evaluate(model: QwenLM, data, batch_size: int, block_size: int, device, autocast=nullcontext(),
             max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy over the first max_batches batches of consecutive blocks
    (always the same text, so successive evaluations are comparable). With several processes each evaluates its
    rows of every batch (distributed.eval_rows), and the sums are added up."""
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), torch.zeros((), device=device)
    for x, y in sequential_blocks(data, batch_size, block_size, device, max_batches=max_batches):
        x, y, counted = distributed.eval_rows(x, y)
        with autocast:
            loss = model(x, y).lm_loss.double()
        if counted:
            total, count = total + loss * y.numel(), count + y.numel()
    model.train()
    return (distributed.sum_over_ranks(total) / distributed.sum_over_ranks(count)).item()


def log_eval(run: Run, step: int) -> None:
    c = run.config
    val_loss = evaluate(run.model, run.corpus.validation, c.batch_size // c.grad_accum_steps, c.block_size,
                        run.device, run.autocast, c.eval_batches)
    run.log({"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss)},
            f"step {step:6d} | validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):,.1f}")


def log_train(run: Run, r: dict) -> None:
    line = f"step {r['step']:6d} | loss {r['lm_loss']:.4f}"
    if "aux_loss" in r:
        line += f" | aux {r['aux_loss']:.3f}"
    line += f" | lr {r['lr']:.2e} | grad norm {r['grad_norm']:.2f} | {r['tokens_per_s']:,.0f} tok/s"
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    if "peak_memory_gib" in r:
        line += f" | peak memory {r['peak_memory_gib']:.1f} GiB"
    run.log(r, line)
    run.bar.set_postfix(loss=f"{r['lm_loss']:.3f}", lr=f"{r['lr']:.1e}")


def save(run: Run, step: int) -> None:
    """The checkpoint, as one process would save it whatever the number of processes (gathered on rank 0, which
    writes it), and the plots."""
    model, optimizer_state = distributed.gathered_state(run.model, run.optimizer)
    if not distributed.is_main():
        return
    train_settings = {k: v for k, v in run.config.to_dict().items() if k != "model"}  # the model's go on top
    checkpoint.save_checkpoint(run.out_dir, model, step, train_config=train_settings,
                               tokenizer=run.corpus.tokenizer, optimizer=optimizer_state)
    plots.save_plots(run.metrics.records, run.out_dir / "analytics")


@contextmanager
def stop_on_ctrl_c():
    """The first Ctrl-C (SIGINT) only sets flag["stop"]: the loop then finishes its step, saves a
    checkpoint and stops. Stopping between two steps keeps weights, optimizer and step consistent,
    which an exception in the middle of optimizer.step() would not. A second Ctrl-C stops at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        if distributed.is_main():  # (torchrun passes the signal on to every process)
            print("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)",
                  file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal.train", allow_abbrev=False,
        usage="%(prog)s [--preset NAME] [--resume] [--stop_at N]\n"
              "       [--FIELD VALUE ...] [--model.FIELD VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the qwen_minimal MoE language model.\n\n"
                    "Start from a preset and override any field: a training field as --FIELD VALUE,\n"
                    "a model field as --model.FIELD VALUE (also --FIELD=VALUE). Booleans take\n"
                    "true/false, optional fields take none. Defaults below are the presets'\n"
                    "(wikitext103 / cpu-tiny); model.vocab_size always follows the tokenizer.",
        epilog="examples:\n"
               "  python -m qwen_minimal.train --preset cpu-tiny\n"
               "  python -m qwen_minimal.train --preset cpu-tiny --max_steps 500 --model.hidden_size 256\n"
               "  python -m qwen_minimal.train --preset wikitext103            # the full bf16 GPU run\n"
               "  python -m qwen_minimal.train --out_dir runs/wikitext103 --resume  # continue a run\n"
               "  torchrun --nproc_per_node 8 -m qwen_minimal.train --preset wikitext103  # 8 GPUs\n"
               "Ctrl-C saves a checkpoint before it stops; --resume continues on the same loss curve.")
    parser.add_argument("--preset", default="wikitext103", choices=sorted(TRAIN_PRESETS),
                        help="training preset (default wikitext103)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out_dir (its saved settings, then your overrides)")
    parser.add_argument("--stop_at", type=int, default=None,
                        help="end this session after that many steps in total (resumable); the schedule "
                             "still spans max_steps")
    presets = [TrainConfig.preset(name) for name in TRAIN_PRESETS]  # wikitext103, then cpu-tiny
    add_field_options(parser.add_argument_group("training fields"), TrainConfig, skip=("model",),
                      defaults=lambda name: " / ".join(str(getattr(c, name)) for c in presets))
    add_field_options(parser.add_argument_group("model fields"), ModelConfig, prefix="model.",
                      defaults=lambda name: " / ".join(str(getattr(c.model, name)) for c in presets))
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's settings: a preset, or with --resume the run's saved settings, changed by the options given."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    reject_unknown(parser, unknown)
    session = {"preset", "resume", "stop_at"}
    overrides = {k: v for k, v in vars(args).items() if k not in session and not k.startswith("model.")}
    model_overrides = {k[len("model."):]: v for k, v in vars(args).items() if k.startswith("model.")}
    try:
        config = TrainConfig.preset(args.preset, model=model_overrides, **overrides)
    except InputError as e:
        parser.error(str(e))
    if args.resume:  # outside the try: a missing or damaged checkpoint is not a usage error, main prints one line
        overrides.pop("out_dir", None)
        config = TrainConfig.from_run(config.out_dir, model=model_overrides, **overrides)
    return config, args


@exit_on_input_error
def main(argv: list[str] | None = None) -> None:
    config, args = config_from_args(argv)
    result = train(config, resume=args.resume, stop_at=args.stop_at)
    distributed.finish()
    if result.interrupted:
        sys.exit(130)  # the shell's code for "stopped by Ctrl-C"


if __name__ == "__main__":
    main()
