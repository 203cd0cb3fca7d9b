"""Mixture of Experts: a top-k router, SwiGLU experts, optional capacity, and the
load-balancing loss."""

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .config import ModelConfig
from .feed_forward import SwiGLU


def count_per_expert(expert_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[E] int64: how often each expert occurs in expert_indices. torch.bincount with a
    fixed output size: torch.bincount's size depends on the data, which torch.compile
    cannot put into one graph."""
    flat = expert_indices.reshape(-1)
    return flat.new_zeros(num_experts).scatter_add_(0, flat, torch.ones_like(flat))


class Routing(NamedTuple):
    """What the router decided for N tokens, kept for the loss and for monitoring."""

    router_logits: torch.Tensor  # [N, E] fp32, before softmax
    expert_indices: torch.Tensor  # [N, k] chosen experts, most probable first
    expert_weights: torch.Tensor  # [N, k] mixing weights of the chosen experts
    # [N, k] bool, False where capacity dropped the assignment; None if dropless
    kept: torch.Tensor | None

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """[E] assignments each expert received (before capacity); sums to N * k.
        Counted when asked for, so that decoding, which never asks, does not pay for it.
        """
        return count_per_expert(self.expert_indices, self.router_logits.shape[-1])


def route(
    router_logits: torch.Tensor,
    num_experts_per_tok: int,
    norm_topk_prob: bool = True,
    selection_bias: torch.Tensor | None = None,
):
    """fp32 softmax over all experts -> the num_experts_per_tok most probable ->
    optionally renormalised to sum to 1. With a selection_bias ([E], bias balancing),
    the experts are chosen by probability + bias, but their mixing weights are still
    their probabilities: the bias decides who works, not how much each counts."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    if selection_bias is None:
        weights, indices = probs.topk(num_experts_per_tok, dim=-1)
    else:
        indices = (probs + selection_bias).topk(num_experts_per_tok, dim=-1).indices
        weights = probs.gather(-1, indices)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def expert_capacity(
    num_tokens: int, num_experts: int, num_experts_per_tok: int, capacity_factor: float
) -> int:
    """Slots per expert: capacity_factor times an even share of the num_tokens *
    num_experts_per_tok assignments."""
    return math.ceil(capacity_factor * num_tokens * num_experts_per_tok / num_experts)


def capacity_mask(
    expert_indices: torch.Tensor, num_experts: int, capacity: int
) -> torch.Tensor:
    """[N, k] bool: which assignments fit into their expert's `capacity` slots.

    Order of service (GShard / Switch): every token's first choice before any token's
    second choice, and within one choice rank, earlier tokens (in flattened batch order)
    first. The overflow is dropped: that token skips the expert and keeps only its
    residual stream for that slot. Because later tokens compete for the same slots,
    routing with a capacity is not causal: a token can be dropped because of tokens
    after it. Dropless routing (capacity_factor=None) has no such effect.
    """
    N, k = expert_indices.shape
    in_service_order = expert_indices.t().reshape(-1)  # rank-major: [k * N]
    one_hot = F.one_hot(in_service_order, num_experts)  # [k * N, E]
    # place in its expert's queue
    queue_position = ((one_hot.cumsum(0) - 1) * one_hot).sum(-1)
    return (queue_position < capacity).view(k, N).t()


def load_balancing_loss(
    router_logits: torch.Tensor | list[torch.Tensor], num_experts_per_tok: int
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss, exactly as transformers'
    `load_balancing_loss_func`.

    E * sum_e f_e * P_e, where f_e is the fraction of tokens that chose expert e among
    their k and P_e the mean router probability of e. A list of per-layer logits is
    concatenated first (the transformers convention: one loss over all layers' tokens,
    not a mean of per-layer losses). Its minimum, under perfectly uniform routing, is k
    = num_experts_per_tok.
    """
    if isinstance(router_logits, (list, tuple)):
        router_logits = torch.cat(list(router_logits), dim=0)
    num_tokens, num_experts = router_logits.shape
    probs = torch.softmax(router_logits.float(), dim=-1)
    chosen = probs.topk(num_experts_per_tok, dim=-1).indices
    fraction_routed = count_per_expert(chosen, num_experts).float() / num_tokens
    return num_experts * (fraction_routed * probs.mean(dim=0)).sum()


def grouped_linear(
    rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor
) -> torch.Tensor:
    """Rows [S, in] sorted by expert, expert e owning rows ends[e-1]:ends[e], each times
    weight[e]^T ([E, out, in]): the per-expert F.linear of Experts.expert in one call.
    """
    return F.grouped_mm(rows, weight.transpose(1, 2), offs=ends)


def grouped_mm_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype in which the experts can run on rows like x as one F.grouped_mm per
    projection (PyTorch >= 2.10), or None where they cannot. On CPU it runs in any
    dtype, but torch.compile does not trace it there. On CUDA it needs bf16 (autocast's
    dtype, if autocast is on) and an Ampere or newer card, and torch.compile traces it
    into the graph. grouped_mm does not autocast by itself: the caller casts to this
    dtype."""
    if not hasattr(F, "grouped_mm"):
        return None
    if x.device.type == "cpu":
        return None if torch.compiler.is_compiling() else x.dtype
    if x.device.type == "cuda":
        dtype = (
            torch.get_autocast_dtype("cuda")
            if torch.is_autocast_enabled("cuda")
            else x.dtype
        )
        # (get_device_properties rather than get_device_capability: torch.compile folds
        # it into a constant)
        if (
            dtype == torch.bfloat16
            and torch.cuda.get_device_properties(x.device).major >= 8
        ):
            return dtype
    return None


EXPERT_PATHS = ("auto", "grouped", "loop")


class Experts(nn.Module):
    """E SwiGLU networks stored as stacked weights, [E, out, in] like nn.Linear's, drawn
    from Normal(0, init_std).

    `path` chooses how a batch of tokens runs through them (the results agree up to
    rounding):
      "grouped"  one F.grouped_mm per projection over the rows sorted by expert (see
      grouped_mm_dtype for
                 where it runs; elsewhere choosing it is an error);
      "loop"     one expert after another on its block of rows, which needs the block
      sizes on the host: a
                 device sync and, under torch.compile, a graph break per layer on a GPU;
      "auto"     (the default) grouped where it runs, else the loop.
    """

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        init_std: float = 0.02,
    ):
        super().__init__()

        def normal(*shape):
            return nn.Parameter(torch.randn(*shape) * init_std)

        self.gate_proj = normal(num_experts, intermediate_size, hidden_size)
        self.up_proj = normal(num_experts, intermediate_size, hidden_size)
        self.down_proj = normal(num_experts, hidden_size, intermediate_size)
        self.path = "auto"

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e applied to the rows of x."""
        return F.linear(
            F.silu(F.linear(x, self.gate_proj[e])) * F.linear(x, self.up_proj[e]),
            self.down_proj[e],
        )

    def forward(
        self,
        x: torch.Tensor,
        expert_indices: torch.Tensor,
        expert_weights: torch.Tensor,
        kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """sum_j weight_j * expert_{index_j}(x) for each row of x ([N, H]).

        Assignments are sorted by expert so that each expert runs once on a contiguous
        block of its tokens: one grouped matrix multiply per projection where PyTorch
        has one, else a loop over experts, never a loop over tokens.
        """
        N, k = expert_indices.shape
        # decoding one token: run its k experts directly, nothing to sort or gather
        if N == 1:
            # (a capacity never drops anything here: each expert receives at most one
            # assignment)
            y = sum(
                w * self.expert(e, x)
                for e, w in zip(expert_indices[0].tolist(), expert_weights[0])
            )
            return y.to(x.dtype)
        expert = expert_indices.reshape(-1)  # assignment a = token * k + slot
        # assignments grouped by expert, in token order within each
        order = expert.argsort(stable=True)
        if kept is not None:
            order = order[kept.reshape(-1)[order]]
        token, weight = order // k, expert_weights.reshape(-1)[order]
        tokens_per_expert = count_per_expert(expert[order], self.gate_proj.shape[0])
        rows = x[token]
        dtype = self.grouped_dtype(rows)
        # every expert on its block of rows in one call per projection
        if dtype is not None:
            # stays on the device: no sync, no graph break
            ends = tokens_per_expert.cumsum(0, dtype=torch.int32)
            gate, up, down = (
                w.to(dtype) for w in (self.gate_proj, self.up_proj, self.down_proj)
            )
            rows = rows.to(dtype)
            out = grouped_linear(
                F.silu(grouped_linear(rows, gate, ends))
                * grouped_linear(rows, up, ends),
                down,
                ends,
            )
        else:
            counts = tokens_per_expert.tolist()
            # Experts without tokens are skipped (when decoding a small batch, most of
            # them); a compiled graph cannot branch on the counts and runs them on their
            # empty blocks instead.
            run_empty = torch.compiler.is_compiling()
            out = torch.cat(
                [
                    self.expert(e, block)
                    for e, block in enumerate(rows.split(counts))
                    if run_empty or counts[e]
                ]
            )
        # Back to assignment order (dropped assignments stay zero), then each token sums
        # its k outputs. Under autocast the experts return bf16 while x may be fp32:
        # accumulate in x's dtype. (A reshape and sum rather than index_add_, which is
        # slow on CPU with several threads.)
        out = x.new_zeros(N * k, x.shape[1]).index_copy_(
            0, order, (out * weight[:, None]).to(x.dtype)
        )
        return out.view(N, k, -1).sum(dim=1)

    def grouped_dtype(self, rows: torch.Tensor) -> torch.dtype | None:
        """The dtype of the grouped path for these rows, or None for the loop, as `path`
        says."""
        if self.path not in EXPERT_PATHS:
            raise InputError(
                f"Experts.path={self.path!r}: choose one of {EXPERT_PATHS}"
            )
        if self.path == "loop":
            return None
        dtype = grouped_mm_dtype(rows)
        if dtype is None and self.path == "grouped":
            raise InputError(
                "Experts.path='grouped', but F.grouped_mm cannot run here "
                f"({rows.device.type}, "
                f"{rows.dtype}, compiling: {torch.compiler.is_compiling()}); see "
                "grouped_mm_dtype. "
                f"Use path='auto' or 'loop'"
            )
        return dtype


class MoE(nn.Module):
    """Route each token to its num_experts_per_tok most probable experts and mix their
    outputs by the router's weights.

    With shared_expert_intermediate_size > 0 (Qwen3-Next, Qwen3.5), every token also
    passes through one shared SwiGLU expert, added with a learned per-token weight
    sigmoid(shared_expert_gate(x)) in (0, 1): knowledge every token needs lives there
    once instead of in many routed experts. It is not routed, so no balancing concerns
    it.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts_per_tok, self.norm_topk_prob = (
            config.num_experts_per_tok,
            config.norm_topk_prob,
        )
        self.num_experts, self.capacity_factor = (
            config.num_experts,
            config.capacity_factor,
        )
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Experts(
            config.num_experts,
            config.hidden_size,
            config.expert_intermediate_size,
            config.init_std,
        )
        self.shared_expert, self.shared_expert_gate = None, None
        if config.shared_expert_intermediate_size:
            self.shared_expert = SwiGLU(
                config.hidden_size, config.shared_expert_intermediate_size
            )
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)
        # Bias balancing (balancing.py): a per-expert bias on the selection scores,
        # learnt by update_bias, not by gradients; a buffer, so that it is saved with
        # the weights. Absent for the other strategies.
        self.register_buffer(
            "expert_bias",
            torch.zeros(config.num_experts)
            if config.load_balancing == "bias"
            else None,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # The router runs in fp32 even in a bf16 model: small logit errors flip top-k
        # choices. (transformers' Qwen3-MoE computes this product in the model's dtype
        # and only the softmax in fp32; in fp32 models the two agree.) Under autocast,
        # F.linear would compute in bf16 whatever its inputs, so autocast is switched
        # off here, only when it is on: entering the context costs more than the router
        # itself when decoding.
        autocast = torch.is_autocast_enabled(x.device.type)
        with (
            torch.autocast(x.device.type, enabled=False)
            if autocast
            else contextlib.nullcontext()
        ):
            router_logits = F.linear(x.float(), self.router.weight.float())
        weights, indices = route(
            router_logits,
            self.num_experts_per_tok,
            self.norm_topk_prob,
            self.expert_bias,
        )
        kept = None
        if self.capacity_factor is not None:
            capacity = expert_capacity(
                x.shape[0],
                self.num_experts,
                self.num_experts_per_tok,
                self.capacity_factor,
            )
            kept = capacity_mask(indices, self.num_experts, capacity)
        y = self.experts(x, indices, weights.to(x.dtype), kept)
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y.view(shape), Routing(router_logits, indices, weights, kept)
