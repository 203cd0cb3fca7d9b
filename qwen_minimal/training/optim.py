"""The optimizer and its learning-rate schedule: AdamW with weight decay on the matrices
only, and a one-cycle cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

BETAS = (
    0.9,
    0.95,
    # beta2 = 0.95: the second moment averages over ~20 steps, so it reacts to sudden
    # growth
)
WEIGHT_DECAY = 0.05


def make_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = BETAS,
    weight_decay: float = WEIGHT_DECAY,
    device: torch.device | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices (ndim >= 2: projections, experts, router,
    embedding) and none on the vectors (RMSNorm gains, biases): decaying a gain towards
    0 would just shrink a layer. Fused (one kernel for all tensors) on CPU and CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    device = device or (params[0].device if params else torch.device("cpu"))
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, fused=device.type in ("cuda", "cpu")
    )


def one_cycle_lr(
    step: int, max_steps: int, lr: float, min_lr: float, warmup_frac: float
) -> float:
    """One-cycle cosine, as torch.optim.lr_scheduler.OneCycleLR(anneal_strategy="cos")
    with initial and final lr both min_lr: half a cosine up from min_lr to lr over the
    first warmup_frac of the steps, then half a cosine down to min_lr at the last step.
    """
    peak, last = warmup_frac * max_steps - 1, max_steps - 1
    if 0 < peak and step <= peak:
        start, end, pct = min_lr, lr, step / peak
    else:
        peak = max(peak, 0.0)
        start, end, pct = (
            lr,
            min_lr,
            (step - peak) / (last - peak) if last > peak else 1.0,
        )
    return end + (start - end) / 2 * (math.cos(math.pi * min(pct, 1.0)) + 1)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
