"""Training on several processes at once, as torchrun starts them:

    torchrun --nproc_per_node 2 -m qwen_minimal train --preset cpu-tiny  # DDP
    torchrun ... train --preset cpu-tiny --parallel fsdp            # sharded (FSDP2)
    torchrun ... train --preset cpu-tiny --expert_parallel true     # experts spread

torchrun runs one copy of the script per device (a rank) and tells each, through RANK,
WORLD_SIZE and LOCAL_RANK, which one it is; start() joins them into a process group
(NCCL between GPUs, gloo between CPUs). Every rank draws the same global batch of a step
and keeps its part of every micro-batch (rank_rows), so the batch, and the loss curve,
do not depend on how many ranks share it. How they share the model:

  ddp   every rank holds the whole model and optimizer; DistributedDataParallel averages
        the gradients over the ranks (an all-reduce, overlapped with the backward pass)
        so that every rank takes the same step.
  fsdp  FSDP2 (fully_shard): every rank holds 1/N of each parameter, of its gradient and
        of its AdamW moments, gathers a block's full weights just before using them and
        frees them after; the gradients are reduce-scattered, each rank keeping the mean
        gradient of its shard.
  expert parallelism (with ddp): every rank holds E/N experts of each MoE layer
        (expert_parallel.py); the rest of the model is data parallel.

Whatever the layout, the checkpoint is the one-process checkpoint of checkpoint.py:
gathered to rank 0, which alone writes files (and prints), and split again on resume, so
a run can resume on any number of ranks. Without torchrun (or with one process) every
function here does what one process needs: mostly nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..devices import resolve_device
from ..errors import InputError
from ..model.decoder import QwenLM
from .expert_parallel import (
    ExpertParallelExperts,
    gather_to_rank0,
    is_expert_parameter,
    moe_layers,
    shard_experts,
)

PARALLEL = ("ddp", "fsdp")
# A collective that waits longer than this fails instead of hanging, e.g. when a peer
# deadlocks. (A peer that dies is noticed sooner: torchrun then stops the others.) It
# must outlast rank 0's first tokenization of the corpus, which the other ranks wait for
# (main_first).
TIMEOUT = timedelta(minutes=20)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this is rank 0, the one that prints and writes files (always, in one
    process)."""
    return rank() == 0


def start(device_name: str) -> torch.device:
    """Join the ranks that torchrun started into a process group (if it started more
    than one) and return this rank's device: the GPU of number LOCAL_RANK on CUDA."""
    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    return device


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first():
    """Rank 0 runs the block first, the others after it: e.g. rank 0 tokenizes the
    corpus into the cache, which the others then read instead of all tokenizing it at
    once."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------- data and metrics


def check_batch(batch_size: int, grad_accum_steps: int) -> None:
    """InputError unless every rank can take an equal part of every micro-batch."""
    parts = world_size() * grad_accum_steps
    if batch_size % parts:
        raise InputError(
            f"batch_size={batch_size} is not divisible by {world_size()} processes x "
            "grad_accum_steps="
            f"{grad_accum_steps} = {parts}: each process takes an equal part of "
            "every micro-batch. "
            f"Choose a batch_size that is a multiple of {parts}, or fewer "
            "grad_accum_steps"
        )


def rank_rows(batch: torch.Tensor, grad_accum_steps: int) -> torch.Tensor:
    """This rank's rows of a global batch [B, ...] of grad_accum_steps micro-batches:
    the rank-th of N equal parts of each micro-batch, in micro-batch order. Cut into
    grad_accum_steps chunks again, they are this rank's parts of the very micro-batches
    that one process runs: the step does not depend on N."""
    if world_size() == 1:
        return batch
    parts = batch.view(grad_accum_steps, world_size(), -1, *batch.shape[1:])
    return parts[:, rank()].reshape(-1, *batch.shape[1:])


def eval_rows(
    x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """This rank's rows of an evaluation batch (inputs, targets), and whether they
    count. A rank left without rows (a last batch smaller than the number of ranks) runs
    the forward pass on one row all the same, which it does not count: with FSDP or
    expert parallelism, every forward pass needs every rank."""
    if world_size() == 1:
        return x, y, True
    x_part, y_part = (t.tensor_split(world_size())[rank()] for t in (x, y))
    return (x_part, y_part, True) if len(x_part) else (x[:1], y[:1], False)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of t over the ranks (a new tensor; t itself in one process)."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    return sum_over_ranks(t) / world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether flag is set on any rank: so that, e.g., a Ctrl-C seen by one rank stops
    all of them at the same step (a rank that stopped alone would leave the others
    waiting in the next collective)."""
    if world_size() == 1:
        return flag
    return bool(sum_over_ranks(torch.tensor(float(flag), device=device)) > 0)


# -------------------------------------------------------------------- sharing the model


def parallelize(model: QwenLM, parallel: str, expert_parallel: bool) -> nn.Module:
    """Spread `model` over the ranks in place, as TrainConfig.parallel and
    expert_parallel say (TrainConfig checks them), and return the module that training
    steps call: the DDP wrapper, or the model itself (always, in one process). Call it
    before building the optimizer, which must see the parameters as they will be."""
    if world_size() == 1:
        return model
    if parallel == "fsdp":
        # one unit per block: its weights are gathered just before it runs
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)  # the rest: embedding, final norm, output layer
        return model
    if expert_parallel:
        shard_experts(model)
        experts = [
            name for name, _ in model.named_parameters() if is_expert_parameter(name)
        ]
        for name in experts:
            # Every rank's tokens reach these experts, so their gradient is the sum of
            # the N ranks' losses; DDP averages the others. Dividing by N makes both the
            # gradient of the mean loss.
            model.get_parameter(name).register_hook(lambda grad: grad / world_size())
        # DDP must not average these: each rank holds other experts. (DDP's own hook for
        # parameters it should leave alone, used by torchrec and others for the same
        # purpose.)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, experts
        )
    device = model.lm_head.weight.device
    # forward_sync_buffers=False: no broadcast of the buffers before every forward pass;
    # they are RoPE tables and bias-balancing biases, which every rank computes alike.
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
    )


def gradient_sync(step_model: nn.Module, last: bool):
    """The context for one micro-batch's backward pass: gradients are averaged over the
    ranks only after the last micro-batch of a step (the others just accumulate locally,
    which saves one exchange per micro-batch)."""
    if isinstance(step_model, DistributedDataParallel) and not last:
        return step_model.no_sync()
    if hasattr(step_model, "set_requires_gradient_sync"):  # FSDP2
        step_model.set_requires_gradient_sync(last)
    return nullcontext()


def _fsdp(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def _expert_parallel(model: nn.Module) -> bool:
    return any(
        isinstance(moe.experts, ExpertParallelExperts) for moe in moe_layers(model)
    )


def grad_norm(modules: list[nn.Module]) -> torch.Tensor:
    """The L2 norm of the gradients of these modules' parameters, over all ranks: where
    each rank holds a part of a gradient (FSDP's shards, the experts under expert
    parallelism), the parts' squares add up over the ranks; a gradient that every rank
    holds whole counts once. With more than one rank, every rank must call it."""
    spread = {
        p
        for m in modules
        for sub in m.modules()
        if isinstance(sub, ExpertParallelExperts)
        for p in sub.parameters()
    }
    whole, parts = [], []
    # a tied weight once
    for p in {p: None for m in modules for p in m.parameters() if p.grad is not None}:
        if isinstance(p.grad, DTensor):
            parts.append(p.grad.to_local())
        else:
            (parts if p in spread else whole).append(p.grad)

    def norm(grads):
        device = next(modules[0].parameters()).device
        return (
            torch.stack([g.float().norm() for g in grads]).norm()
            if grads
            else torch.zeros((), device=device)
        )

    if not parts:
        return norm(whole)
    return (norm(whole) ** 2 + sum_over_ranks(norm(parts) ** 2)).sqrt()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over all ranks: scale every gradient down if their
    norm over the whole model (grad_norm) exceeds max_norm, and return that norm, before
    clipping."""
    # every rank holds every gradient whole
    if not (_fsdp(model) or _expert_parallel(model)):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = grad_norm([model])
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm


# -----------------------------------------------------------------------------
# checkpoints in the one-process layout

FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters, in its order: what the numbers in
    optimizer.state_dict() stand for."""
    names = {p: name for name, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def gathered_state(
    model: QwenLM, optimizer: torch.optim.Optimizer
) -> tuple[QwenLM | None, dict | None]:
    """On rank 0: a QwenLM with the model's full weights and the optimizer's
    state_dict(), both as one process would hold them; on the other ranks (None, None).
    Every rank must call it: the parts are gathered. model: the model that parallelize()
    changed, not the DDP wrapper it returned."""
    if world_size() == 1:
        return model, optimizer.state_dict()
    if _expert_parallel(model):
        group = moe_layers(model)[0].experts.group
        weights = {
            name: gather_to_rank0(t, group) if is_expert_parameter(name) else t
            for name, t in model.state_dict().items()
        }
        state = optimizer.state_dict()
        names = _parameter_names(model, optimizer)
        for i, s in state[
            "state"
        ].items():  # the AdamW moments of the experts are stacked like their weights
            if is_expert_parameter(names[i]):
                state["state"][i] = {
                    key: gather_to_rank0(t, group) if t.dim() else t
                    for key, t in s.items()
                }
    elif _fsdp(
        model
        # torch.distributed.checkpoint gathers the shards; its optimizer state is keyed
        # by name
    ):
        # (.clone(): the gathered tensors can be views into padded buffers, which
        # safetensors will not save)
        weights = {
            name: t.clone()
            for name, t in get_model_state_dict(model, options=FULL_ON_RANK0).items()
        }
        by_name = get_optimizer_state_dict(model, optimizer, options=FULL_ON_RANK0)
        state = (
            _numbered(by_name, _parameter_names(model, optimizer))
            if is_main()
            else None
        )
    else:  # DDP: every rank holds it all
        weights, state = model.state_dict(), optimizer.state_dict()
    return (_model_holding(model.config, weights), state) if is_main() else (None, None)


def _numbered(by_name: dict, names: list[str]) -> dict:
    """An optimizer state keyed by parameter name (torch.distributed.checkpoint's
    layout) keyed by number instead, as optimizer.state_dict() is; `names` are the
    optimizer's parameters in its order."""
    number = {name: i for i, name in enumerate(names)}
    groups = [
        {**group, "params": [number[name] for name in group["params"]]}
        for group in by_name["param_groups"]
    ]
    return {
        "state": {number[name]: s for name, s in by_name["state"].items()},
        "param_groups": groups,
    }


def _by_name(numbered: dict, names: list[str]) -> dict:
    """The inverse of _numbered."""
    groups = [
        {**group, "params": [names[i] for i in group["params"]]}
        for group in numbered["param_groups"]
    ]
    return {
        "state": {names[i]: s for i, s in numbered["state"].items()},
        "param_groups": groups,
    }


def _model_holding(config, weights: dict) -> QwenLM:
    """A QwenLM around the tensors in `weights`, without allocating or copying any
    (built on the meta device)."""
    with torch.device("meta"):
        model = QwenLM(config)
    model.load_state_dict(weights, assign=True)
    # assigned one by one, the two names now hold two tensors: one again
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load an optimizer state_dict() of one process (as saved in a checkpoint) into
    this rank's optimizer, whatever the layout: each rank keeps its part. model: the
    model that parallelize() changed."""
    names = _parameter_names(model, optimizer)
    if _expert_parallel(model):
        local_part = moe_layers(model)[0].experts.local_part
        state = {
            **state,
            "state": {
                i: {
                    key: local_part(t)
                    if t.dim() and is_expert_parameter(names[i])
                    else t
                    for key, t in s.items()
                }
                for i, s in state["state"].items()
            },
        }
    if _fsdp(model):  # each rank takes its shards of the full tensors
        set_optimizer_state_dict(
            model,
            optimizer,
            _by_name(state, names),
            options=StateDictOptions(full_state_dict=True),
        )
    else:
        optimizer.load_state_dict(state)
