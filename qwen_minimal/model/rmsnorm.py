"""RMSNorm: scale each vector to unit root-mean-square, then by a learned gain."""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * gain. zero_centered=True (Gemma's, the Qwen3-Next / Qwen3.5
    hybrids'): the parameter w stores the gain's offset from 1, gain = 1 + w,
    initialised to zeros, so that weight decay on it, which Qwen3-Next applies, pulls
    the gain towards 1 rather than 0. (This package's optimizer decays matrices only.)
    """

    def __init__(self, dim: int, eps: float = 1e-6, zero_centered: bool = False):
        super().__init__()
        self.eps = eps
        self.zero_centered = zero_centered
        self.weight = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A gain of 1: weight 1, or 0 when zero-centred."""
        nn.init.constant_(self.weight, 0.0 if self.zero_centered else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.zero_centered:
            # transformers' order: normalise and scale in fp32, one cast at the end.
            normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        # F.rms_norm is weight * x * rsqrt(mean(x^2) + eps), the same numbers bit for
        # bit, in one call instead of several: that matters when decoding one token at a
        # time, where each call costs more than its arithmetic.
        if x.dtype == self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # Statistics in fp32 even for bf16 inputs: a mean of squares loses too much in 8
        # mantissa bits.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        # Cast back before the gain, as transformers does, so bf16 results agree bit for
        # bit; the final cast keeps the input dtype when the gain itself is kept in fp32
        # (mixed-precision training).
        return (self.weight * normed.to(x.dtype)).to(x.dtype)
