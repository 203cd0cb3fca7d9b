"""Turning next-token logits into a token: greedy, temperature, top-k and top-p
(nucleus); and the checks of what generation is given, made once before its first
token."""

import math
from collections.abc import Callable

import torch

from ..errors import InputError


def check_sampling(
    temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    """InputError for a temperature that is not a finite number >= 0, a top_k below 1,
    a top_p outside (0, 1] (nan included)."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(
            f"temperature={temperature} must be a finite number >= 0 (0 means greedy)"
        )
    if top_k is not None and top_k < 1:
        raise InputError(
            f"top_k={top_k} must be at least 1 (or None to keep every token)"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top_p={top_p} must be in (0, 1]")


def check_prompt(
    input_ids: torch.Tensor, vocab_size: int, max_new_tokens: int = 0
) -> None:
    """InputError unless input_ids is a non-empty [B, T] tensor of token ids in [0,
    vocab_size) and max_new_tokens is at least 0. Reads the smallest and largest id
    from the device: one wait for it, so a caller checks once, not per token."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(getattr(input_ids, "shape", ())) or type(input_ids).__name__
        raise InputError(
            f"input_ids must be a [batch, length] tensor of token ids, got {shape}: "
            "for one prompt, pass torch.tensor([ids])"
        )
    if (
        input_ids.is_floating_point()
        or input_ids.is_complex()
        or (input_ids.dtype == torch.bool)
    ):
        raise InputError(
            f"input_ids must hold integer token ids, got dtype {input_ids.dtype}"
        )
    if input_ids.numel() == 0:
        raise InputError(
            f"the prompt is empty (input_ids of shape {tuple(input_ids.shape)}): "
            "give at least one token, e.g. the tokenizer's end-of-text token"
        )
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens={max_new_tokens} must be at least 0")
    low, high = torch.stack(input_ids.aminmax()).tolist()
    if low < 0 or high >= vocab_size:
        raise InputError(
            f"input_ids holds token id {low if low < 0 else high}, outside the "
            f"model's vocabulary [0, {vocab_size}): was it made by another tokenizer?"
        )


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to -inf every logit outside the top_k largest and outside the smallest set
    whose probability reaches top_p. logits: [B, V]. The settings are the ones that
    check_sampling accepts (sampler checks them once, not for every token)."""
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
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


def sampler(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The settings checked once; returns logits [B, V] -> one token per row [B, 1].
    temperature=0 is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return greedy_token

    def sample(logits: torch.Tensor) -> torch.Tensor:
        logits = filter_logits(logits.float() / temperature, top_k, top_p)
        return torch.multinomial(
            logits.softmax(dim=-1), num_samples=1, generator=generator
        )

    return sample


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of logits ([B, V]) -> [B, 1]. temperature=0 is greedy
    (argmax)."""
    return sampler(temperature, top_k, top_p, generator)(logits)
