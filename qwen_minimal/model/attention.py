"""Grouped-query attention with QK-norm and RoPE (Qwen3), with an optional KV cache and
the hybrids' per-head output gate (Qwen3-Next, Qwen3.5)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kv_cache import KVCache
from .rmsnorm import RMSNorm
from .rope import apply_rope


def causal_mask(q_len: int, k_len: int, device=None) -> torch.Tensor:
    """Boolean [q_len, k_len] mask, True where attention is allowed.

    Queries are the last q_len of k_len positions, so query i may see keys 0 .. k_len -
    q_len + i.
    """
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(
        diagonal=k_len - q_len
    )


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out. q: [B, H, Tq, D]; k, v:
    [B, H, Tk, D]."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(
        ~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf")
    )
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same computation through PyTorch's fused kernel. k and v may have fewer heads
    than q (GQA): the kernel then shares each KV head with its group of query heads
    without copying it."""
    q_len, k_len = q.shape[2], k.shape[2]
    gqa = k.shape[1] != q.shape[1]
    if q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # one new token during decoding sees every cached position: no mask needed
    if q_len == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal_mask(q_len, k_len, q.device), enable_gqa=gqa
    )


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # which slice of a KVCache this layer owns
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        h, bias = config.hidden_size, config.attention_bias
        # Output gate: q_proj yields, per head, head_dim query channels followed by
        # head_dim gate channels (transformers' layout: [q_1, gate_1, q_2, ...]).
        self.output_gate = config.attn_output_gate
        self.q_head_width = self.head_dim * (2 if self.output_gate else 1)
        self.q_proj = nn.Linear(h, self.num_heads * self.q_head_width, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=bias)
        # QK-norm: RMSNorm over each head's query and key vectors, before RoPE, keeps
        # logits bounded.
        self.q_norm = RMSNorm(
            self.head_dim, config.rms_norm_eps, config.zero_centered_norm
        )
        self.k_norm = RMSNorm(
            self.head_dim, config.rms_norm_eps, config.zero_centered_norm
        )
        # False selects attention_math (identical results, slower, easier to inspect)
        self.use_sdpa = True

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.q_head_width)
        if self.output_gate:
            q, gate = q.split(self.head_dim, dim=-1)
        # [B, T, heads, D] -> [B, heads, T, D]
        q = self.q_norm(q).transpose(1, 2)
        k = self.k_norm(
            self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        ).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        if self.use_sdpa:
            out = attention_sdpa(q, k, v)
        # GQA written out: each KV head serves num_heads // num_kv_heads consecutive
        # query heads
        else:
            group = self.num_heads // self.num_kv_heads
            out = attention_math(
                q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            )
        out = out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        if self.output_gate:
            # each channel of each head's output scaled by its gate, in (0, 1)
            out = out * torch.sigmoid(gate.reshape(B, T, -1))
        return self.o_proj(out)
