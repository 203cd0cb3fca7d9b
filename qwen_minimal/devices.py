"""Which device to run on, waiting for it, and what it can do (the peak FLOP/s behind
MFU)."""

import torch

from .errors import InputError

# Dense bf16 tensor-core peak per GPU, from the vendors' data sheets; the first matching
# name wins.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
]


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" is the first of cuda, mps, cpu that is available; other names must be
    available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(
            f"device={name!r} is not a device name: use auto, cuda, cuda:N, mps or cpu"
        ) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device={name!r}, but PyTorch sees no CUDA GPU: use --device auto or cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"device={name!r}, but MPS is not available: use --device auto or cpu"
        )
    return device


def describe(device: torch.device) -> str:
    """The device and, for a GPU, its name: "cuda = NVIDIA H200"."""
    return (
        f"{device} = {torch.cuda.get_device_name(device)}"
        if device.type == "cuda"
        else str(device)
    )


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished its queued work (GPUs run asynchronously), so
    that a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak FLOP/s of a known GPU (PEAK_BF16_FLOPS), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
