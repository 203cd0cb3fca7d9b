"""RMSNorm: scale each vector to unit root-mean-square, then by a learned gain."""
import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 even for bf16 inputs: a mean of squares loses too much in 8 mantissa bits.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the gain, as transformers does, so bf16 results agree bit for bit; the final
        # cast keeps the input dtype when the gain itself is kept in fp32 (mixed-precision training).
        return (self.weight * x32.to(x.dtype)).to(x.dtype)
