"""Expert parallelism: each of N processes holds E / N of every MoE layer's experts, and
the tokens travel.

moe.Experts runs all E experts where the tokens are. Here rank r holds only experts
r*E/N ... (r+1)*E/N - 1 of each layer (a slice of the stacked weights), and every
forward pass moves the tokens to their experts and back:

  dispatch  sort this rank's (token, expert) assignments by expert, which also groups
            them by the rank that holds the expert; tell every rank how many rows it
            will receive (an all-to-all of counts), then send the rows, one hidden
            vector per assignment (an all-to-all of [assignments, H]);
  compute   run the local experts on the rows received from every rank (moe.Experts on
            the slice);
  combine   send each output row back to the rank of its token (the same all-to-all, the
            other way) and sum each token's k outputs weighted by the router, as
            moe.Experts does.

Attention, router and norms stay data parallel: every rank has all of them and its own
tokens. The two all-to-alls run on a process group of their own, so that they never
interleave with the data-parallel gradient all-reduces of the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError
from ..model.moe import Experts, MoE, count_per_expert


def exchange(
    rows: torch.Tensor, send_splits: list[int], recv_splits: list[int], group
) -> torch.Tensor:
    """All-to-all: the first send_splits[0] rows go to rank 0, the next send_splits[1]
    to rank 1, ...; the result holds recv_splits[0] rows from rank 0, then
    recv_splits[1] from rank 1, ..."""
    out = rows.new_empty(sum(recv_splits), *rows.shape[1:])
    dist.all_to_all_single(
        out, rows.contiguous(), recv_splits, send_splits, group=group
    )
    return out


class AllToAll(torch.autograd.Function):
    """exchange() for autograd. Its backward is the same exchange the other way round:
    the gradient of each row travels back to the rank that sent the row."""

    @staticmethod
    def forward(ctx, rows, send_splits, recv_splits, group):
        ctx.splits, ctx.group = (recv_splits, send_splits), group
        return exchange(rows, send_splits, recv_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return exchange(grad, *ctx.splits, ctx.group), None, None, None


class ExpertParallelExperts(Experts):
    """This rank's slice of an Experts module, with the same forward(x, expert_indices,
    expert_weights, kept).

    Every rank of `group` must call forward at the same time, once per MoE layer, in the
    same layer order. The parameters keep moe.Experts' names and hold rows first ..
    first + num_local - 1 of the stacked weights.
    """

    def __init__(self, experts: Experts, group: dist.ProcessGroup | None = None):
        nn.Module.__init__(
            self
            # not Experts.__init__: the weights are a slice of `experts`, not new random
            # ones
        )
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        self.num_experts = experts.gate_proj.shape[0]
        if self.num_experts % world:
            raise InputError(
                f"expert parallelism over {world} processes needs num_experts "
                f"divisible by {world}, "
                f"got num_experts={self.num_experts}: change the number of processes "
                "or of experts"
            )
        self.group, self.num_local = group, self.num_experts // world
        self.first = rank * self.num_local
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(
                self,
                name,
                nn.Parameter(self.local_part(getattr(experts, name).detach()).clone()),
            )
        self.path = experts.path

    def local_part(self, stacked: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor stacked over all E experts (a weight, or its
        optimizer moments)."""
        return stacked[self.first : self.first + self.num_local]

    def forward(
        self,
        x: torch.Tensor,
        expert_indices: torch.Tensor,
        expert_weights: torch.Tensor,
        kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        N, k = expert_indices.shape
        world = dist.get_world_size(self.group)
        # assignment a = token * k + slot, as in Experts.forward
        expert = expert_indices.reshape(-1)
        # by expert, hence by the rank holding it: rank 0's block first
        order = expert.argsort(stable=True)
        if kept is not None:
            order = order[kept.reshape(-1)[order]]

        # Dispatch. The counts go first: all_to_all_single needs every split size on the
        # host (a device sync).
        # [E]: world blocks of num_local
        sent = count_per_expert(expert[order], self.num_experts)
        # [world * num_local]: from rank s, for expert j
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        send_splits = sent.view(world, -1).sum(1).tolist()
        recv_splits = received.view(world, -1).sum(1).tolist()
        rows = AllToAll.apply(x[order // k], send_splits, recv_splits, self.group)

        # Compute: each received row names its local expert; moe.Experts sorts them by
        # expert and runs each expert once on its block, with weight 1 (the router
        # weights are applied at home, in the combine).
        local_expert = torch.arange(self.num_local, device=x.device).repeat(world)
        local_expert = local_expert.repeat_interleave(received)
        if len(rows):
            out = super().forward(
                rows, local_expert[:, None], rows.new_ones(len(rows), 1)
            )
        # no row for these experts this time: one runs on the empty block all the same,
        # so that every
        else:
            # weight gets a (zero) gradient, as on the other ranks
            out = self.expert(0, rows)

        # Combine: back to the token's rank, in the order sent, then as Experts.forward
        # ends.
        out = AllToAll.apply(out, recv_splits, send_splits, self.group)
        weight = expert_weights.reshape(-1)[order]
        y = x.new_zeros(N * k, x.shape[1]).index_copy_(
            0, order, (out * weight[:, None]).to(x.dtype)
        )
        return y.view(N, k, x.shape[1]).sum(dim=1)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def shard_experts(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """In place: every MoE layer keeps only this rank's experts (ExpertParallelExperts).
    group: the processes the experts are spread over; by default a new group of all
    ranks, for the all-to-alls alone (see above)."""
    group = dist.new_group() if group is None else group
    for moe in moe_layers(model):
        moe.experts = ExpertParallelExperts(moe.experts, group)


def is_expert_parameter(name: str) -> bool:
    """Whether a parameter (by its name in the model) is an expert weight, which expert
    parallelism splits."""
    return ".experts." in name


def gather_to_rank0(
    local: torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor | None:
    """The full stacked tensor [E, ...] from every rank's slice [E / N, ...], on rank 0
    of `group`; None elsewhere."""
    is_root = dist.get_rank(group) == 0
    parts = (
        [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        if is_root
        else None
    )
    dist.gather(local.contiguous(), parts, group_dst=0, group=group)
    return torch.cat(parts) if is_root else None
