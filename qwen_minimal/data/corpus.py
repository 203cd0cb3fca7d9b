"""The corpus: train and validation token ids, the tokenizer that made them, and what
was loaded.

Where the text comes from (the first that applies wins):
  argument > $QWEN_MINIMAL_DATA > hub WikiText-103 (or its ids already in the cache) >
offline demo text The tokenizer: see tokenizer.py. The demo fallback is announced with
one DemoDataWarning.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerFast

from ..errors import MissingInputError
from .hub import SET_DATA_HINT, hub_reachable, offline_help
from .text import (
    DEFAULT_CONFIG,
    HUB_CONFIGS,
    HUB_DATASET,
    demo_splits,
    hub_splits,
    local_splits,
)
from .token_cache import cached_tokens, token_file
from .tokenizer import (
    DemoDataWarning,
    demo_tokenizer_message,
    find_tokenizer,
    is_demo,
    tokenizer_fingerprint,
)

DEMO_TEXT_NAME = "Python's help text (the offline demo corpus)"


@dataclass
class Corpus:
    train: np.ndarray  # 1-D token ids (a read-only memmap of the cache file)
    validation: np.ndarray
    tokenizer: PreTrainedTokenizerFast
    source: str  # one human-readable line saying what was loaded
    # what the text is: "Salesforce/wikitext wikitext-103-v1", a local folder, or the
    # demo
    text_name: str = ""
    demo_text: bool = False  # the offline demo text stands in for WikiText

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def demo_tokenizer(self) -> bool:
        """The offline demo BPE stands in for GPT-2's tokenizer."""
        return is_demo(self.tokenizer)


def load_corpus(
    path: str | os.PathLike | None = None,
    tokenizer=None,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Train and validation token ids, with the tokenizer and a line saying where they
    came from.

    path: a local folder or file, or a hub WikiText config name (one of HUB_CONFIGS);
    default
      $QWEN_MINIMAL_DATA, else WikiText-103 from the hub (or its ids already in the
      cache), else the
      offline demo text. tokenizer: a tokenizer, or a name/path for load_tokenizer();
    default load_tokenizer(). cache_dir: where token ids are kept; default
    $QWEN_MINIMAL_CACHE, else ~/.cache/qwen_minimal. The offline demo fallback (text,
    tokenizer or both) is announced with one DemoDataWarning.
    """
    asked = path or os.environ.get("QWEN_MINIMAL_DATA")
    hub_config = (
        DEFAULT_CONFIG
        if not asked
        else str(asked)
        if str(asked) in HUB_CONFIGS
        else None
    )
    # Local paths are checked here, so that a bad one fails at once, before the
    # tokenizer is loaded.
    local = None if hub_config else local_splits(Path(asked).expanduser())
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = find_tokenizer(tokenizer, cache_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)

    demo = False
    if local:
        train, valid, where = local
        source, text_name = f"local text {where}", str(Path(asked).expanduser())
    else:
        train, valid = hub_splits(hub_config)
        text_name = f"{HUB_DATASET} {hub_config}"
        source = f"{text_name} from the Hugging Face hub"
        cached = all(
            token_file(s, tokenizer, fingerprint, cache_dir).exists()
            for s in (train, valid)
        )
        if not cached and not hub_reachable():
            if asked:
                raise MissingInputError(
                    offline_help(
                        f"the hub dataset {hub_config!r} was asked for and its "
                        f"tokens are not in the cache"
                    )
                )
            train, valid = demo_splits()
            demo, text_name = True, DEMO_TEXT_NAME
            source = (
                "OFFLINE DEMO text: Python's help text (pydoc_data.topics), not "
                "WikiText, because the hub "
                "is unreachable and no data was given"
            )
    train_ids, valid_ids = (
        cached_tokens(s, tokenizer, token_file(s, tokenizer, fingerprint, cache_dir))
        for s in (train, valid)
    )
    source += (
        f"; tokenizer {tokenizer.name_or_path} ({len(tokenizer):,} tokens); "
        f"{len(train_ids):,} train / {len(valid_ids):,} validation tokens"
    )
    corpus = Corpus(train_ids, valid_ids, tokenizer, source, text_name, demo)
    notes = (
        [f"{source.split(';')[0]}. For the real corpus, {SET_DATA_HINT}."]
        if demo
        else []
    ) + ([demo_tokenizer_message(tokenizer)] if corpus.demo_tokenizer else [])
    if notes:
        warnings.warn(" ".join(notes), DemoDataWarning, stacklevel=2)
    return corpus
