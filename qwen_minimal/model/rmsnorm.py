"""RMSNorm: scale each vector to unit root-mean-square, then by a learned gain."""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
