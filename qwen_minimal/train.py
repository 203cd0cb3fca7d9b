"""Training: `python -m qwen_minimal.train --preset cpu-tiny` from a shell, or from Python

    from qwen_minimal.train import TrainConfig, train
    result = train(TrainConfig.preset("cpu-tiny", max_steps=100, model=dict(num_layers=2)))

The objective is next-token cross-entropy plus router_aux_loss_coef times the load-balancing loss,
minimised by AdamW under a one-cycle cosine learning-rate schedule, with gradient clipping, bfloat16
autocast around fp32 master weights, and optionally torch.compile. Everything a run writes goes to
out_dir: the checkpoint (see checkpoint.py), metrics.jsonl and analytics/*.png (see monitoring.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
import time
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, monitoring
from .config import ModelConfig
from .data import load_corpus, random_blocks, sequential_blocks
from .model import QwenLM


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
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = field(default=0.05, metadata={
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
    seed: int = field(default=1337, metadata={"help": "seeds the initialisation and the data order"})

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        for name in ("batch_size", "grad_accum_steps", "block_size", "max_steps", "eval_interval",
                     "log_interval", "monitor_interval", "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum_steps="
                             f"{self.grad_accum_steps}: each micro-batch must have the same size")
        if self.block_size > self.model.max_seq_len:
            raise ValueError(f"block_size={self.block_size} exceeds the model's max_seq_len="
                             f"{self.model.max_seq_len}: lower block_size or raise model.max_seq_len")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype={self.dtype!r}: choose 'bfloat16' or 'float32'")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        check_fields(cls, values)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        """A preset of TRAIN_PRESETS with fields overridden; `model` may be a dict of ModelConfig
        overrides (applied to the preset's model) or a ModelConfig."""
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
        values = dict(TRAIN_PRESETS[name])
        model_preset = values.pop("model")
        model = overrides.pop("model", {})
        check_fields(cls, overrides)
        if not isinstance(model, ModelConfig):
            model = ModelConfig.preset(model_preset, **model)
        return cls(model=model, **{**values, **overrides})


def check_fields(cls, values: dict) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")


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


# ----------------------------------------------------------------------------- pieces of a run


def lr_at(step: int, config: TrainConfig) -> float:
    """One-cycle cosine, as torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos") with initial and
    final lr both min_lr: half a cosine up from min_lr to lr over the first warmup_frac of the steps,
    then half a cosine down to min_lr at the last step."""
    peak, last = config.warmup_frac * config.max_steps - 1, config.max_steps - 1
    if 0 < peak and step <= peak:
        start, end, pct = config.min_lr, config.lr, step / peak
    else:
        peak = max(peak, 0.0)
        start, end, pct = config.lr, config.min_lr, (step - peak) / (last - peak) if last > peak else 1.0
    return end + (start - end) / 2 * (math.cos(math.pi * min(pct, 1.0)) + 1)


def make_optimizer(model: QwenLM, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (ndim >= 2: projections, experts, router, embedding) and
    none on the vectors (RMSNorm gains, biases): decaying a gain towards 0 would just shrink a layer."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=device.type in ("cuda", "cpu"))  # one kernel for all tensors


def batch_at(step: int, data, config: TrainConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of `step`: a function of (seed, step) alone, so a resumed run sees exactly
    the batches the uninterrupted run would have seen."""
    generator = torch.Generator().manual_seed((config.seed << 32) + step)
    return random_blocks(data, config.batch_size, config.block_size, generator=generator, device=device)


def resolve_device(name: str) -> torch.device:
    """"auto" is the first of cuda, mps, cpu that is available; other names must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device={name!r} is not a device name: use auto, cuda, cuda:N, mps or cpu") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but PyTorch sees no CUDA GPU: use --device auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r}, but MPS is not available: use --device auto or cpu")
    return device


# Dense bf16 tensor-core peak per GPU, from the vendors' data sheets; the first matching name wins.
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12)]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(model: QwenLM, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward), as in the PaLM paper's MFU: 6 per active matmul
    parameter (the LM head included, the embedding lookup not; top_k of num_experts experts) plus the
    attention scores and weighted sums, 12 * layers * heads * head_dim * seq_len."""
    c = model.config
    matmul_params = model.num_parameters(active=True, include_embedding=False) + c.vocab_size * c.hidden_size
    return 6 * matmul_params + 12 * c.num_layers * c.num_heads * c.head_dim * seq_len


@torch.no_grad()
def evaluate(model: QwenLM, data, config: TrainConfig, device, autocast) -> float:
    """Mean next-token cross-entropy over the first eval_batches batches of consecutive blocks
    (always the same text, so successive evaluations are comparable)."""
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), 0
    micro_batch = config.batch_size // config.grad_accum_steps
    for x, y in sequential_blocks(data, micro_batch, config.block_size, device, max_batches=config.eval_batches):
        with autocast:
            total += model(x, y).lm_loss.double() * y.numel()
        count += y.numel()
    model.train()
    return (total / count).item()


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
        print("\nCtrl-C: stopping after this step and saving a checkpoint (press again to abort at once)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig, resume: bool = False, stop_at: int | None = None) -> TrainResult:
    """Train as `config` says and return the model, the metrics and the output folder.

    resume: continue the run whose checkpoint is in config.out_dir, on the same loss curve as if it had
      never stopped (same batches, schedule and optimizer state). Without it, an out_dir that already
      holds a checkpoint is an error, so that a finished run is never overwritten by accident.
    stop_at: end this session after that many steps in total (checkpointed, resumable) without changing
      the schedule, which still spans max_steps; e.g. to fit a run into time-limited sessions.
    """
    out_dir = Path(config.out_dir)
    if not resume and (out_dir / checkpoint.CHECKPOINT_DIR).exists():
        raise FileExistsError(f"{out_dir} already holds a checkpoint: pass --resume (resume=True) to "
                              f"continue that run, or choose another --out_dir, or delete {out_dir}")
    device = resolve_device(config.device)
    corpus = load_corpus(config.data, config.tokenizer)
    if config.model.vocab_size != corpus.vocab_size:  # the model's vocabulary is the tokenizer's
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=corpus.vocab_size))

    torch.manual_seed(config.seed)
    model = QwenLM(config.model).to(device)  # fp32 master weights; autocast computes in bf16
    optimizer = make_optimizer(model, config, device)
    start = 0
    if resume:
        saved = checkpoint.read_config(out_dir)
        if saved["model"] != config.model.to_dict():
            diff = {k: (v, config.model.to_dict()[k]) for k, v in saved["model"].items()
                    if config.model.to_dict()[k] != v}
            raise ValueError(f"the checkpoint in {out_dir} is of another model, (saved, asked) = {diff}: "
                             f"resume with the same model settings, or start a new run in another out_dir")
        changed = {k: (v, getattr(config, k)) for k, v in (saved["train"] or {}).items()
                   if k != "model" and v != getattr(config, k)}
        start = checkpoint.load_train_state(out_dir, model, optimizer)
        print(f"Resuming {out_dir} at step {start}" + (f"; changed settings (saved, now): {changed}" if changed
                                                     else ""))
    metrics = monitoring.MetricsLog(out_dir / "metrics.jsonl", keep_before=start if resume else None)
    end = max(start, min(config.max_steps, config.max_steps if stop_at is None else stop_at))

    step_model = torch.compile(model) if config.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.dtype == "bfloat16" else nullcontext()
    tokens_per_step = config.batch_size * config.block_size
    flops = flops_per_token(model, config.block_size)
    peak = peak_flops(device) if config.dtype == "bfloat16" else None
    print(f"Data: {corpus.source}")
    print(f"Model: {model.num_parameters():,} parameters, {model.num_parameters(active=True):,} active per token; "
          f"{flops / 1e6:.1f} MFLOP per token per training step")
    where = f"{device} = {torch.cuda.get_device_name(device)}" if device.type == "cuda" else str(device)
    print(f"Training on {where} ({config.dtype}{', compiled' if config.compile else ''}): steps {start} -> {end} "
          f"of {config.max_steps}, {tokens_per_step:,} tokens per step; output in {out_dir}")

    def save():
        checkpoint.save_checkpoint(out_dir, model, step, train_config=_train_dict(config),
                                   tokenizer=corpus.tokenizer, optimizer=optimizer)
        monitoring.save_plots(metrics.records, out_dir / "analytics")

    moe = config.model.use_moe
    window = {"steps": 0, "lm": 0.0, "aux": 0.0, "norm": 0.0}  # train-record averages, as device tensors
    expert_load = 0  # tokens per expert [L, E] summed since the last monitor record
    bar = tqdm(total=config.max_steps, initial=start, disable=not config.progress, dynamic_ncols=True, desc="train")
    timer, timed_tokens = time.perf_counter(), 0
    step = start
    with stop_on_ctrl_c() as ctrl_c:
        for step in range(start, end):
            if ctrl_c["stop"]:
                break
            if step % config.eval_interval == 0:
                _log_eval(metrics, step, evaluate(model, corpus.validation, config, device, autocast), bar)
                timer, timed_tokens = time.perf_counter(), 0
            if step > start and step % config.checkpoint_interval == 0:
                save()
                timer, timed_tokens = time.perf_counter(), 0
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Monitoring steps run the uncompiled model, so that its hooks never make torch.compile retrace.
            monitor_now = step % config.monitor_interval == 0
            with monitoring.record_activations(model) if monitor_now else nullcontext([]) as activations:
                x, y = batch_at(step, corpus.train, config, device)
                for xm, ym in zip(x.chunk(config.grad_accum_steps), y.chunk(config.grad_accum_steps)):
                    with autocast:
                        out = (model if monitor_now else step_model)(xm, ym)
                    (out.loss / config.grad_accum_steps).backward()
                    window["lm"] += out.lm_loss.detach() / config.grad_accum_steps
                    if moe:
                        window["aux"] += out.aux_loss.detach() / config.grad_accum_steps
                        expert_load = expert_load + out.tokens_per_expert
            if monitor_now:
                grad_norms = monitoring.layer_grad_norms(model)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            window["norm"] += norm.detach()
            window["steps"] += 1
            timed_tokens += tokens_per_step
            bar.update()

            if monitor_now:
                record = {"kind": "monitor", "step": step, "grad_norm_attn": grad_norms["attn"],
                          "grad_norm_ffn": grad_norms["ffn"],
                          # the first micro-batch's statistics: one (mean, std) per block
                          "act_mean": [m.item() for m, _ in activations[:config.model.num_layers]],
                          "act_std": [s.item() for _, s in activations[:config.model.num_layers]]}
                if moe:
                    record["tokens_per_expert"] = expert_load.tolist()
                    record["kl_uniform"] = monitoring.kl_to_uniform(expert_load).tolist()
                    expert_load = 0
                metrics.log(record)
            if (step + 1) % config.log_interval == 0 or step + 1 == end:
                n = window["steps"]
                lm = float(window["lm"]) / n  # the first .item()-like call since the last log: one sync
                elapsed = time.perf_counter() - timer
                record = {"kind": "train", "step": step, "loss": lm, "lm_loss": lm, "lr": lr,
                          "grad_norm": float(window["norm"]) / n, "tokens_per_s": timed_tokens / elapsed}
                if moe:
                    record["aux_loss"] = float(window["aux"]) / n
                    record["loss"] = lm + config.model.router_aux_loss_coef * record["aux_loss"]
                if peak:
                    record["mfu"] = record["tokens_per_s"] * flops / peak
                if device.type == "cuda":  # the allocator's high-water mark since the start of the run
                    record["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                metrics.log(record)
                _log_train(record, bar)
                window = {"steps": 0, "lm": 0.0, "aux": 0.0, "norm": 0.0}
                timer, timed_tokens = time.perf_counter(), 0
        else:
            step = end
        interrupted = ctrl_c["stop"]
    if step == config.max_steps:
        _log_eval(metrics, step, evaluate(model, corpus.validation, config, device, autocast), bar)
    save()
    bar.close()
    if interrupted:
        print(f"Interrupted at step {step}: checkpoint saved. Continue with\n"
              f"  python -m qwen_minimal.train --out_dir {out_dir} --resume", file=sys.stderr)
    print(f"Saved checkpoint, metrics.jsonl and analytics/ in {out_dir}")
    return TrainResult(model, config, metrics.records, out_dir, step, interrupted, corpus.tokenizer)


def _train_dict(config: TrainConfig) -> dict:
    values = config.to_dict()
    del values["model"]  # stored once, at the top of config.json
    return values


def _log_eval(metrics, step, val_loss, bar):
    metrics.log({"kind": "eval", "step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss)})
    bar.write(f"step {step:6d} | validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):,.1f}")


def _log_train(r, bar):
    line = f"step {r['step']:6d} | loss {r['lm_loss']:.4f}"
    if "aux_loss" in r:
        line += f" | aux {r['aux_loss']:.3f}"
    line += f" | lr {r['lr']:.2e} | grad norm {r['grad_norm']:.2f} | {r['tokens_per_s']:,.0f} tok/s"
    if "mfu" in r:
        line += f" | MFU {100 * r['mfu']:.1f}%"
    if "peak_memory_gib" in r:
        line += f" | peak memory {r['peak_memory_gib']:.1f} GiB"
    bar.write(line)
    bar.set_postfix(loss=f"{r['lm_loss']:.3f}", lr=f"{r['lr']:.1e}")


# ----------------------------------------------------------------------------- command line


def _parse_value(text: str, hint) -> object:
    """Command-line text -> a value of the field's type (int, float, str, bool, or X | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")
    try:
        return hint(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid {hint.__name__}") from None


def _field_options(cls, prefix: str = ""):
    """(option, field name, type hint, help) for every field of a config dataclass except `model`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name != "model":
            yield f"--{prefix}{f.name}", f.name, hints[f.name], f.metadata.get("help", "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_minimal.train", allow_abbrev=False,
        usage="%(prog)s [--preset NAME] [--resume] [--stop_at N] [--FIELD VALUE ...] [--model.FIELD VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the qwen_minimal MoE language model.\n\n"
                    "Start from a preset and override any field: a training field as --FIELD VALUE, a model\n"
                    "field as --model.FIELD VALUE (also --FIELD=VALUE). Booleans take true/false, optional\n"
                    "fields take none. Defaults below are the presets' (wikitext103 / cpu-tiny); model.vocab_size\n"
                    "always follows the tokenizer.",
        epilog="examples:\n"
               "  python -m qwen_minimal.train --preset cpu-tiny\n"
               "  python -m qwen_minimal.train --preset cpu-tiny --max_steps 500 --model.hidden_size 256\n"
               "  python -m qwen_minimal.train --preset wikitext103            # the full bf16 GPU run\n"
               "  python -m qwen_minimal.train --out_dir runs/wikitext103 --resume  # continue a run\n"
               "Ctrl-C saves a checkpoint before it stops; --resume continues on the same loss curve.")
    parser.add_argument("--preset", default="wikitext103", choices=sorted(TRAIN_PRESETS),
                        help="training preset (default wikitext103)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out_dir (its saved settings, then your overrides)")
    parser.add_argument("--stop_at", type=int, default=None,
                        help="end this session after that many steps in total (resumable); the schedule "
                             "still spans max_steps")
    presets = {name: TrainConfig.preset(name) for name in TRAIN_PRESETS}  # wikitext103, then cpu-tiny
    groups = [(parser.add_argument_group("training fields"), TrainConfig, "", lambda c: c),
              (parser.add_argument_group("model fields"), ModelConfig, "model.", lambda c: c.model)]
    for group, cls, prefix, pick in groups:
        for option, name, hint, help in _field_options(cls, prefix):
            defaults = " / ".join(str(getattr(pick(c), name)) for c in presets.values())
            group.add_argument(option, dest=prefix + name, default=argparse.SUPPRESS, metavar="VALUE",
                               type=lambda text, hint=hint: _parse_value(text, hint),
                               help=f"{help} ({defaults})" if help else f"({defaults})")
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
        parser.error(f"unknown option(s) {' '.join(unknown)}. Valid options: {' '.join(options)}")
    session = {"preset", "resume", "stop_at"}
    overrides = {k: v for k, v in vars(args).items() if k not in session and not k.startswith("model.")}
    model_overrides = {k[len("model."):]: v for k, v in vars(args).items() if k.startswith("model.")}
    try:
        config = TrainConfig.preset(args.preset, model=model_overrides, **overrides)
        if args.resume:  # the run's own settings, with only what was given on this command line changed
            saved = checkpoint.read_config(config.out_dir)
            config = TrainConfig.from_dict({**saved["train"], **overrides, "out_dir": config.out_dir,
                                            "model": ModelConfig.from_dict({**saved["model"], **model_overrides})})
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = config_from_args(argv)
    try:
        result = train(config, resume=args.resume, stop_at=args.stop_at)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if result.interrupted:
        sys.exit(130)  # the shell's code for "stopped by Ctrl-C"


if __name__ == "__main__":
    main()
