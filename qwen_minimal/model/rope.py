"""Rotary position embedding (RoFormer), in the rotate-half layout that Qwen3 and
transformers use."""

import torch
from torch import nn

from ..errors import InputError


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The head_dim / 2 angular frequencies theta^(-2i / head_dim), fastest first."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel i with channel i + rotary_dim/2 by the angle of its position. x:
    [..., T, head_dim]; cos, sin: [T, rotary_dim]. Partial RoPE (rotary_dim < head_dim,
    the hybrids): only the first rotary_dim channels turn, the others carry no position
    and pass unchanged."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    return torch.cat((rotated * cos + rotate_half(rotated) * sin, passed), dim=-1)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0 .. max_seq_len - 1. head_dim is the
    number of channels that turn: with partial RoPE, ModelConfig.rotary_dim, and the
    frequencies are those of a head that narrow, as in transformers."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        angles = torch.outer(
            torch.arange(max_seq_len, dtype=torch.float32),
            rope_frequencies(head_dim, theta),
        )
        # both halves of a rotated pair share an angle
        angles = torch.cat((angles, angles), dim=-1)
        # Not saved in checkpoints: they are a function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for positions start .. start + length - 1, each [length,
        head_dim]."""
        if start + length > self.cos.shape[0]:
            raise InputError(
                f"positions up to {start + length} exceed "
                f"max_seq_len={self.cos.shape[0]}: "
                f"shorten the input or build the model with a larger max_seq_len"
            )
        return self.cos[start : start + length], self.sin[start : start + length]
