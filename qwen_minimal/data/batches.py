"""Batches of fixed-size blocks of token ids with their next-token targets: random ones
for training, consecutive ones for evaluation."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import InputError


def _check_block_args(data, batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise InputError(
            f"batch_size={batch_size} and block_size={block_size} must both be at "
            "least 1"
        )
    if len(data) <= block_size:
        raise InputError(
            f"{len(data)} tokens are too few for block_size={block_size}: a block "
            "needs "
            "block_size + 1 tokens (inputs and their next-token targets); lower "
            "block_size"
        )


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    # Pinned memory lets the copy to a GPU run asynchronously, overlapping the previous
    # step.
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_blocks(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device="cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: batch_size blocks of block_size tokens at random offsets (as in
    nanoGPT). Returns x, y of shape [batch_size, block_size], int64; y[:, t] is the
    token that follows x[:, t] in the text, so y is x shifted left by one token.
    `generator` (a CPU torch.Generator) makes the offsets repeatable."""
    _check_block_args(data, batch_size, block_size)
    starts = torch.randint(
        len(data) - block_size, (batch_size,), generator=generator
    ).tolist()
    rows = torch.from_numpy(
        np.stack([data[i : i + block_size + 1] for i in starts]).astype(np.int64)
    )
    return _to_device(rows[:, :-1].contiguous(), device), _to_device(
        rows[:, 1:].contiguous(), device
    )


def sequential_blocks(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    device="cpu",
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches: the text cut into consecutive, non-overlapping blocks of
    block_size tokens, in order, batch_size blocks per batch (the last batch may be
    smaller), at most max_batches batches. Tokens after the last whole block are left
    out. Yields x, y as in random_blocks."""
    _check_block_args(data, batch_size, block_size)
    num_blocks = (len(data) - 1) // block_size
    # the first block of each batch
    firsts = range(0, num_blocks, batch_size)[:max_batches]

    def batches():
        for first in firsts:
            a, z = first * block_size, min(first + batch_size, num_blocks) * block_size
            x = torch.from_numpy(data[a:z].astype(np.int64)).view(-1, block_size)
            y = torch.from_numpy(data[a + 1 : z + 1].astype(np.int64)).view(
                -1, block_size
            )
            yield _to_device(x, device), _to_device(y, device)

    return batches()  # arguments are checked now, not at the first next()
