"""Watching a training run: gradient norms per layer, activation statistics per block,
the load of every expert, and the metrics file (JSON lines) that holds them; plots.py
draws them.

The metrics file holds one JSON object per line, each with a "kind":
  train    step, loss, lm_loss, aux_loss, lr, grad_norm, tokens_per_s (and mfu on a
           known GPU), averaged over the steps since the previous train record; on CUDA
           also peak_memory_gib, the most memory the run's tensors have held so far
  eval     step, val_loss, val_ppl
  monitor  step, grad_norm_attn[L], grad_norm_ffn[L], act_mean[L], act_std[L],
           tokens_per_expert[L][E] (the assignments of that step's whole batch) and,
           from it, kl_uniform[L], kl_mean_load (the KL of the load averaged over
           layers) and max_violation[L]
`step` counts the optimizer updates done before the measurement, so train and eval
records of the same step describe the same weights.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..files import cannot_write, write_text_atomic
from .distributed import grad_norm

# -----------------------------------------------------------------------------
# measurements


def layer_grad_norms(model: nn.Module) -> dict[str, list[float]]:
    """L2 norm of the gradient of each block's attention half (attn_norm + attn) and
    feed-forward half (ffn_norm + MoE or MLP), over all processes
    (distributed.grad_norm). Call between backward() and the optimizer step (before
    clipping)."""
    norms = torch.stack(
        [
            torch.stack(
                [grad_norm([b.attn_norm, b.attn]), grad_norm([b.ffn_norm, b.ffn])]
            )
            for b in model.blocks
        ]
    ).tolist()  # one device sync for all layers
    return {"attn": [a for a, _ in norms], "ffn": [f for _, f in norms]}


@contextmanager
def record_activations(model: nn.Module):
    """Inside the `with`, a forward hook on every block stores the mean and standard
    deviation of the residual stream it outputs. Yields a list that receives one (mean,
    std) pair of tensors per block and forward pass; the hooks are removed on exit, so
    normal steps pay nothing."""
    stats = []

    def hook(module, inputs, output):
        x = output[0].detach().float()  # a block returns (hidden states, routing)
        stats.append((x.mean(), x.std()))

    handles = [block.register_forward_hook(hook) for block in model.blocks]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def kl_to_uniform(tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """KL(p || uniform) = sum_e p_e log(E p_e) of each row's load distribution p =
    counts / sum(counts). 0 for a perfectly even load, log(E) when one expert takes
    every token. [..., E] -> [...]."""
    counts = tokens_per_expert.double()
    p = counts / counts.sum(-1, keepdim=True)
    return torch.special.xlogy(p, p * counts.shape[-1]).sum(-1)  # xlogy: 0 log 0 = 0


def kl_of_mean_load(tokens_per_expert: torch.Tensor) -> float:
    """KL to uniform of the load averaged over the layers ([L, E] -> one number): the
    original implementation's metric. Weaker than the per-layer KL: layers that favour
    different experts average out to an even load."""
    counts = tokens_per_expert.double()
    return kl_to_uniform((counts / counts.sum(-1, keepdim=True)).mean(0)).item()


def max_violation(tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """MaxVio = max_e load_e / mean load - 1 of each row (DeepSeek's and Qiu et al.'s
    measure): 0 when even, 1 when the busiest expert has twice its share, E - 1 when it
    has everything. [..., E] -> [...]."""
    counts = tokens_per_expert.double()
    return counts.max(-1).values / counts.mean(-1) - 1


# ------------------------------------------------------------------------- metrics file


class MetricsLog:
    """Appends records to a JSON-lines file and keeps them in `records`.

    keep_before: on resume, the records of steps before this one are kept and later ones
    dropped (they are about to be measured again); None starts a new file."""

    def __init__(self, path: str | Path, keep_before: int | None = None):
        self.path = Path(path)
        old = (
            read_metrics(self.path)
            if keep_before is not None and self.path.exists()
            else []
        )
        self.records = [r for r in old if r["step"] < (keep_before or 0)]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(
                self.path, "".join(json.dumps(r) + "\n" for r in self.records)
            )
        except OSError as e:
            raise cannot_write(self.path, e) from None

    def log(self, record: dict) -> None:
        self.records.append(record)
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a line cut short is dropped on resume (read_metrics)
            raise cannot_write(self.path, e) from None


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics file (a run's <out_dir>/metrics.jsonl), in order. A last
    line cut short (by a crash or a full disk while it was written) is dropped with a
    warning; any other line that is not a record is an InputError."""
    lines = [
        (number, line)
        for number, line in enumerate(Path(path).read_text().splitlines(), 1)
        if line.strip()
    ]
    records = []
    for number, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != lines[-1][0]:
                raise InputError(
                    f"{path} line {number} is not a JSON record: delete that line, or "
                    "the file to start its metrics afresh"
                ) from None
            print(
                f"warning: dropped the last line of {path}, which was cut short",
                file=sys.stderr,
            )
    return records


def of_kind(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["kind"] == kind]
