"""Turning next-token logits into a token: greedy, temperature, top-k and top-p
(nucleus)."""

import torch

from ..errors import InputError


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the smallest set
    whose probability reaches top_p. logits: [B, V]."""
    if top_k is not None:
        if top_k < 1:
            raise InputError(
                f"top_k={top_k} must be at least 1 (or None to keep every token)"
            )
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise InputError(f"top_p={top_p} must be in (0, 1]")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first
        # always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(
            drop_sorted.scatter(-1, order, drop_sorted), float("-inf")
        )
    return logits


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """The most probable token of each row ([B, V] -> [B, 1]); the first one on ties, as
    torch.argmax. On CPU through NumPy, whose argmax over a row is vectorised and many
    times faster than torch.argmax's over a vocabulary-sized row: for a small model that
    difference is a visible part of a decoding step (chapter 9 measures it)."""
    if logits.device.type == "cpu":
        return torch.from_numpy(logits.detach().float().numpy().argmax(axis=-1)).view(
            -1, 1
        )
    return logits.argmax(dim=-1, keepdim=True)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of logits ([B, V]) -> [B, 1]. temperature=0 is greedy
    (argmax)."""
    if temperature < 0:
        raise InputError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if temperature == 0:
        return greedy_token(logits)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)
