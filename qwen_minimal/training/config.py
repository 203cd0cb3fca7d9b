"""The settings of a training run: TrainConfig (the model's settings are its
ModelConfig) and the named presets, with checks that say what to fix."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import (
    InputError,
    check_at_least,
    check_field_types,
    check_known_fields,
)
from ..model.config import ModelConfig
from . import checkpoint, distributed
from .optim import BETAS, WEIGHT_DECAY


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Data. None follows qwen_minimal.data: $QWEN_MINIMAL_DATA /
    # $QWEN_MINIMAL_TOKENIZER, then the hub.
    data: str | None = field(
        default=None, metadata={"help": "text folder/file or hub WikiText config"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer folder or hub name"}
    )
    batch_size: int = field(
        default=128, metadata={"help": "sequences per optimizer step"}
    )
    grad_accum_steps: int = field(
        default=1,
        metadata={
            "help": "split each step's batch into this many micro-batches: less "
            "memory, same batch"
        },
    )
    block_size: int = field(
        default=256, metadata={"help": "tokens per training sequence"}
    )
    max_steps: int = field(
        default=6000, metadata={"help": "optimizer steps; the lr schedule spans them"}
    )
    # AdamW and the one-cycle cosine schedule.
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    min_lr: float = field(
        default=1e-5, metadata={"help": "learning rate at the first and the last step"}
    )
    warmup_frac: float = field(
        default=0.1, metadata={"help": "fraction of the steps spent rising to lr"}
    )
    beta1: float = BETAS[0]
    beta2: float = BETAS[1]
    weight_decay: float = field(
        default=WEIGHT_DECAY,
        metadata={
            "help": "decoupled weight decay on matrices (ndim >= 2); none on norm "
            "gains and biases"
        },
    )
    grad_clip: float = field(
        default=1.0, metadata={"help": "max global gradient norm; 0 disables clipping"}
    )
    # Measuring and saving.
    eval_interval: int = field(
        default=250, metadata={"help": "steps between validation passes"}
    )
    eval_batches: int | None = field(
        default=None,
        metadata={
            "help": "validation batches per pass; None: the whole validation split"
        },
    )
    log_interval: int = field(
        default=10, metadata={"help": "steps between training log lines"}
    )
    monitor_interval: int = field(
        default=100,
        metadata={
            "help": "steps between gradient-norm / activation / expert-load "
            "measurements"
        },
    )
    checkpoint_interval: int = field(
        default=500, metadata={"help": "steps between checkpoints (and plots)"}
    )
    out_dir: str = field(
        default="runs/wikitext103",
        metadata={"help": "folder for checkpoint, metrics, plots"},
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    # Hardware.
    device: str = field(
        default="auto",
        metadata={"help": "auto (cuda > mps > cpu), cuda, cuda:1, mps or cpu"},
    )
    dtype: str = field(
        default="bfloat16",
        metadata={"help": "autocast dtype: bfloat16 (weights stay fp32) or float32"},
    )
    compile: bool = field(
        default=True, metadata={"help": "torch.compile the model for training steps"}
    )
    parallel: str = field(
        default="ddp",
        metadata={
            "help": "under torchrun, how the processes share the model: each holds "
            "all of it (ddp), or 1/N of every "
            "weight, gradient and AdamW moment (fsdp)",
            "choices": distributed.PARALLEL,
        },
    )
    expert_parallel: bool = field(
        default=False,
        metadata={
            "help": "under torchrun, with parallel=ddp: each process holds "
            "num_experts / N experts of every MoE layer"
        },
    )
    seed: int = field(
        default=1337, metadata={"help": "seeds the initialisation and the data order"}
    )

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        check_at_least(
            1,
            **{
                name: getattr(self, name)
                for name in (
                    "batch_size",
                    "grad_accum_steps",
                    "block_size",
                    "max_steps",
                    "eval_interval",
                    "log_interval",
                    "monitor_interval",
                    "checkpoint_interval",
                )
            },
        )
        check_at_least(0, seed=self.seed)
        if self.batch_size % self.grad_accum_steps:
            raise InputError(
                f"batch_size={self.batch_size} is not divisible by grad_accum_steps="
                f"{self.grad_accum_steps}: each micro-batch must have the same size"
            )
        if self.block_size > self.model.max_seq_len:
            raise InputError(
                f"block_size={self.block_size} exceeds the model's max_seq_len="
                f"{self.model.max_seq_len}: lower block_size or raise model.max_seq_len"
            )
        # a nan passes every comparison below, and an inf lr passes them too
        for name in (
            "lr",
            "min_lr",
            "warmup_frac",
            "beta1",
            "beta2",
            "weight_decay",
            "grad_clip",
        ):
            if not math.isfinite(getattr(self, name)):
                raise InputError(
                    f"{name}={getattr(self, name)} must be a finite number"
                )
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise InputError(
                f"need 0 <= beta1, beta2 < 1, got beta1={self.beta1}, "
                f"beta2={self.beta2}"
            )
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError(
                f"weight_decay={self.weight_decay} and grad_clip={self.grad_clip} "
                "cannot be negative (grad_clip=0 disables clipping)"
            )
        if not 0 <= self.warmup_frac < 1:
            raise InputError(f"warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 < self.min_lr <= self.lr:
            raise InputError(
                f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}"
            )
        if self.dtype not in ("bfloat16", "float32"):
            raise InputError(f"dtype={self.dtype!r}: choose 'bfloat16' or 'float32'")
        if self.parallel not in distributed.PARALLEL:
            raise InputError(
                f"parallel={self.parallel!r}: choose one of "
                f"{', '.join(distributed.PARALLEL)}"
            )
        if self.expert_parallel and (self.parallel != "ddp" or not self.model.use_moe):
            raise InputError(
                "expert_parallel=true spreads the experts of a MoE model "
                "(model.use_moe=true) over the "
                "processes and keeps the rest data parallel: use it with parallel=ddp"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        check_known_fields(cls, values)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> TrainConfig:
        """A preset of TRAIN_PRESETS with fields overridden; `model` may be a dict of
        ModelConfig overrides (applied to the preset's model) or a ModelConfig."""
        if name not in TRAIN_PRESETS:
            raise InputError(
                f"unknown training preset {name!r}; choose one of "
                f"{sorted(TRAIN_PRESETS)}"
            )
        values = dict(TRAIN_PRESETS[name])
        model = overrides.pop("model", {})
        check_known_fields(cls, overrides)
        if not isinstance(model, ModelConfig):
            model = ModelConfig.preset(values["model"], **model)
        return cls(**{**values, **overrides, "model": model})

    @classmethod
    def from_run(
        cls, out_dir: str | Path, model: dict | None = None, **overrides
    ) -> TrainConfig:
        """The settings a run in out_dir was trained with, with the given fields
        changed: what --resume runs."""
        saved = checkpoint.read_config(out_dir)
        train_settings = {**(saved["train"] or {}), "out_dir": str(out_dir)}
        # the saved settings alone first, so that an error in them names the file and
        # not the options
        try:
            check_field_types(cls, train_settings)
            cls.from_dict(
                {**train_settings, "model": ModelConfig.from_dict(saved["model"])}
            )
        except (InputError, TypeError) as e:
            raise InputError(
                f"{checkpoint.find_checkpoint(out_dir) / checkpoint.CONFIG} holds "
                "training settings "
                f"that cannot be used ({e}): fix that file, or start a new run in "
                "another "
                f"--out_dir"
            ) from None
        check_known_fields(cls, overrides)
        model_config = ModelConfig.from_dict({**saved["model"], **(model or {})})
        return cls.from_dict(
            {
                **train_settings,
                **overrides,
                "out_dir": str(out_dir),
                "model": model_config,
            }
        )


# The settings of the CPU runs, whichever the model.
CPU_TINY_RUN = dict(
    batch_size=8,
    block_size=64,
    max_steps=100,
    lr=3e-3,
    min_lr=1e-4,
    eval_interval=20,
    eval_batches=4,
    log_interval=10,
    monitor_interval=10,
    checkpoint_interval=100,
    dtype="float32",
    compile=False,
)

TRAIN_PRESETS: dict[str, dict] = {
    # The original run: 6,000 steps of 128 x 256 tokens on one 80 GB GPU, bf16 autocast,
    # torch.compile.
    "wikitext103": dict(model="wikitext103", out_dir="runs/wikitext103"),
    # Visibly learns on a 2-core CPU in about a minute: small batches, a high learning
    # rate, fp32, no compile.
    "cpu-tiny": dict(model="cpu-tiny", out_dir="runs/cpu-tiny", **CPU_TINY_RUN),
    # The same run on the Qwen3-Next-style hybrid of the same width.
    "cpu-tiny-hybrid": dict(
        model="cpu-tiny-hybrid", out_dir="runs/cpu-tiny-hybrid", **CPU_TINY_RUN
    ),
}
