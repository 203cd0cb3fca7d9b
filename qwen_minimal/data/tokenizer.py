"""The tokenizer: GPT-2's byte-level BPE from a local folder or the Hugging Face hub,
or, offline with nothing given, a small byte-level BPE trained on the demo text
(Python's help pages).

Where it comes from (the first that applies wins):
  argument > $QWEN_MINIMAL_TOKENIZER > hub "gpt2" (or its copy in the local Hugging Face
  cache) > offline demo BPE
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

from ..errors import InputError, MissingInputError
from ..files import short_hash, write_text_atomic
from .hub import hub_reachable, offline_help
from .text import demo_text
from .token_cache import cache_folder

DEFAULT_TOKENIZER = "gpt2"
DEMO_VOCAB_SIZE = 8192
DEMO_NAME = "offline demo BPE (trained on Python's help text)"
EOS = "<|endoftext|>"


class DemoDataWarning(UserWarning):
    """The offline demo text or tokenizer is used instead of WikiText and GPT-2's: the
    hub is out of reach and nothing local was given. (A notebook may silence it and say
    so in its own words.)"""


def load_tokenizer(
    name_or_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer: argument > $QWEN_MINIMAL_TOKENIZER > hub "gpt2" (or its local
    HF cache) > an offline demo BPE trained on Python's documentation (announced with a
    DemoDataWarning). A local folder may hold tokenizer.json / tokenizer_config.json, or
    GPT-2's vocab.json + merges.txt."""
    tokenizer = find_tokenizer(name_or_path, cache_dir)
    if is_demo(tokenizer):
        import warnings

        warnings.warn(demo_tokenizer_message(tokenizer), DemoDataWarning, stacklevel=2)
    return tokenizer


def find_tokenizer(name_or_path=None, cache_dir=None) -> PreTrainedTokenizerFast:
    """load_tokenizer without the warning (for callers that announce the demo fallback
    themselves)."""
    asked = name_or_path or os.environ.get("QWEN_MINIMAL_TOKENIZER")
    if not asked:
        return _hub_tokenizer(DEFAULT_TOKENIZER, required=False) or demo_tokenizer(
            cache_dir
        )
    path = Path(asked).expanduser()
    # A hub name looks like "gpt2" or "org/name"; what exists, or starts like a path, is
    # a local folder.
    if (
        path.exists()
        or isinstance(asked, os.PathLike)
        or str(asked).startswith(("/", ".", "~"))
    ):
        return local_tokenizer(path)
    return _hub_tokenizer(str(asked), required=True)


def local_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """The tokenizer saved in `folder`: tokenizer.json / tokenizer_config.json, or
    GPT-2's vocab.json + merges.txt."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(
            f"no tokenizer folder at {folder}: point $QWEN_MINIMAL_TOKENIZER (or the "
            "argument) "
            "at a folder with tokenizer.json, or with GPT-2's vocab.json and "
            "merges.txt"
        )
    names = {p.name for p in folder.iterdir()}
    if names & {"tokenizer.json", "tokenizer_config.json"}:
        load = AutoTokenizer.from_pretrained
    elif {"vocab.json", "merges.txt"} <= names:
        # Bare GPT-2 files: AutoTokenizer cannot tell which class they belong to, so we
        # say it.
        load = GPT2TokenizerFast.from_pretrained
    else:
        raise MissingInputError(
            f"no tokenizer files in {folder}: expected tokenizer.json, or vocab.json + "
            f"merges.txt (GPT-2). Point $QWEN_MINIMAL_TOKENIZER at such a folder"
        )
    try:
        return load(folder)
    # The tokenizers library reports a damaged file as a bare Exception ("Error while
    # initializing BPE: EOF while parsing a value at line 1 column 9").
    except Exception as e:
        raise InputError(
            f"the tokenizer in {folder} cannot be read "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): a file "
            "there is damaged or not a tokenizer's; put back good copies, or point "
            "$QWEN_MINIMAL_TOKENIZER at another folder"
        ) from None


def _hub_tokenizer(name: str, required: bool) -> PreTrainedTokenizerFast | None:
    """The hub tokenizer `name`; offline, the copy in the local Hugging Face cache if
    there is one. Missing: an error if the user asked for it by name, else None (the
    caller falls back)."""
    online = hub_reachable()
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=not online)
    except OSError:
        if online:
            raise
    if required:
        raise MissingInputError(
            offline_help(
                f"tokenizer {name!r} is not a local folder, so it would come "
                f"from the hub"
            )
        )
    return None


def demo_tokenizer(cache_dir=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE (like GPT-2's, vocabulary DEMO_VOCAB_SIZE) trained on
    demo_text(), kept in the cache."""
    text = demo_text()
    path = (
        cache_folder(cache_dir) / f"demo-bpe-{DEMO_VOCAB_SIZE}-{short_hash(text)}.json"
    )
    if not path.exists():
        write_text_atomic(
            path,
            train_byte_level_bpe(
                text.splitlines(keepends=True), DEMO_VOCAB_SIZE
            ).to_str(),
        )
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS)
    tok.name_or_path = DEMO_NAME
    return tok


def train_byte_level_bpe(lines, vocab_size: int) -> Tokenizer:
    """A byte-level BPE like GPT-2's (every byte is a token, merges learnt from `lines`,
    <|endoftext|> special)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(lines, trainer)
    return bpe


def is_demo(tokenizer) -> bool:
    return tokenizer.name_or_path == DEMO_NAME


def demo_tokenizer_message(tokenizer) -> str:
    return (
        "OFFLINE DEMO TOKENIZER: the hub is unreachable and no tokenizer was given, "
        "so this is a "
        f"{len(tokenizer)}-token byte-level BPE trained on Python's help text, not "
        "GPT-2's. "
        f"Set $QWEN_MINIMAL_TOKENIZER to a GPT-2 tokenizer folder for the real one."
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of the tokenizer's whole definition (vocabulary, merges,
    normalisation, special tokens)."""
    if not tokenizer.is_fast:
        raise InputError(
            f"{type(tokenizer).__name__} is a slow tokenizer: load a fast one "
            "(use_fast=True)"
        )
    return short_hash(
        tokenizer.backend_tokenizer.to_str()
        + json.dumps(tokenizer.added_tokens_encoder, sort_keys=True)
    )
