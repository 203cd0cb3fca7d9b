"""The token-id cache: the ids of each text split under each tokenizer, written once to
a flat file and opened by later runs as a read-only numpy memmap.

A file holds uint16 ids (uint32 for vocabularies over 65,536), nothing else. It lives in
the cache folder (argument > $QWEN_MINIMAL_CACHE > ~/.cache/qwen_minimal) and is named
by the identity of the text (a key: path, size and mtime, or hub name) and of the
tokenizer (a hash of its full definition), so that a changed text or tokenizer is never
read from a stale file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..files import short_hash, write_atomic
from .hub import SET_DATA_HINT


@dataclass
class TextSplit:
    """One split's text: `key` names it in the cache, `lines()` reads it (only on a
    cache miss)."""

    key: str
    description: str
    lines: Callable[[], Sequence[str]]


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder for token ids and the demo tokenizer: argument > $QWEN_MINIMAL_CACHE >
    ~/.cache/qwen_minimal."""
    path = (
        cache_dir
        or os.environ.get("QWEN_MINIMAL_CACHE")
        or Path.home() / ".cache" / "qwen_minimal"
    )
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def tokenize_lines(
    lines: Iterable[str], tokenizer, batch_lines: int = 4096
) -> Iterator[np.ndarray]:
    """Token ids of `lines`, each line tokenized on its own, yielded as one int64 array
    per batch of lines. Batches let the Rust tokenizer use every core without holding
    the whole text's ids as Python ints."""
    it = iter(lines)
    while batch := list(islice(it, batch_lines)):
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        yield np.fromiter(chain.from_iterable(ids), dtype=np.int64)


def id_dtype(tokenizer) -> type:
    return np.uint16 if len(tokenizer) <= 2**16 else np.uint32


def token_file(split: TextSplit, tokenizer, fingerprint: str, cache_dir=None) -> Path:
    """Where the ids of `split` under this tokenizer are cached: named by both
    identities."""
    name = f"{short_hash(split.key)}-{fingerprint}.{np.dtype(id_dtype(tokenizer))}"
    return cache_folder(cache_dir) / "tokens" / name


def cached_tokens(split: TextSplit, tokenizer, path: Path) -> np.memmap:
    """The ids of `split` as a read-only memmap of `path`; tokenized and written there
    if it does not exist."""
    dtype = id_dtype(tokenizer)
    # written atomically, so only damage from outside (a copy cut short) makes this
    size = path.stat().st_size if path.exists() else None
    if size is not None and (size == 0 or size % np.dtype(dtype).itemsize):
        print(
            f"The token cache {path} is damaged ({size:,} bytes, not a "
            f"whole number of {np.dtype(dtype)} ids): tokenizing again.",
            file=sys.stderr,
        )
        path.unlink()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = split.lines()
        if len(lines) > 100_000:  # a first run on WikiText-103 takes minutes: say why
            print(
                f"Tokenizing {split.description} ({len(lines):,} lines) into {path}; "
                "later runs reuse it.",
                file=sys.stderr,
            )

        def write(f):
            count = 0
            for ids in tokenize_lines(lines, tokenizer):
                ids.astype(dtype).tofile(f)
                count += ids.size
            if count == 0:
                raise InputError(
                    f"{split.description} gives no tokens: it holds no text. "
                    f"{SET_DATA_HINT}"
                )

        write_atomic(path, write)
    return np.memmap(path, dtype=dtype, mode="r")
