"""Training text as token ids: WikiText-103 and the GPT-2 tokenizer, token ids cached on disk,
and batches of fixed-size blocks with next-token targets.

Where things come from (the first that applies wins):
  tokenizer: argument > $QWEN_MINIMAL_TOKENIZER > hub "gpt2" > offline demo BPE (announced)
  text:      argument > $QWEN_MINIMAL_DATA      > hub WikiText-103 > offline demo text (announced)

How the text becomes ids: every line is tokenized on its own, newline included, and the ids are
concatenated. Nothing is added between lines or articles (no <|endoftext|>): WikiText keeps its
" = Heading = " lines, which already mark where an article starts. On the WikiText files this equals
tokenizing the whole file at once (tests/test_data.py checks it). The hub's WikiText gives blank lines
as empty strings (no tokens), where the raw files have " \\n".

The ids of each split are written once to a flat file of uint16 (uint32 for vocabularies over 65,536)
in the cache folder (argument > $QWEN_MINIMAL_CACHE > ~/.cache/qwen_minimal), named by the identity of
the text (path, size and mtime, or hub name) and of the tokenizer (a hash of its full definition);
later runs open it as a read-only numpy memmap without tokenizing again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

HUB_DATASET = "Salesforce/wikitext"
HUB_CONFIGS = ("wikitext-103-v1", "wikitext-103-raw-v1", "wikitext-2-v1", "wikitext-2-raw-v1")
DEFAULT_CONFIG = "wikitext-103-v1"
DEFAULT_TOKENIZER = "gpt2"
# File names of the splits in a local folder: the WikiText archives' names, then short ones.
SPLIT_FILES = {
    "train": ("wiki.train.tokens", "wiki.train.raw", "train.txt"),
    "valid": ("wiki.valid.tokens", "wiki.valid.raw", "valid.txt", "validation.txt"),
    "test": ("wiki.test.tokens", "wiki.test.raw", "test.txt"),
}
HOLDOUT = 10  # with no split files, the last 1/HOLDOUT of the lines is the validation text
DEMO_VOCAB_SIZE = 8192
EOS = "<|endoftext|>"
SET_DATA_HINT = ("set $QWEN_MINIMAL_DATA (or pass a path) to a folder with wiki.train.tokens/wiki.valid.tokens, "
                 "train.txt/valid.txt, valid.txt/test.txt or plain .txt files")


@dataclass
class Corpus:
    train: np.ndarray        # 1-D token ids (a read-only memmap of the cache file)
    validation: np.ndarray
    tokenizer: PreTrainedTokenizerFast
    source: str              # one human-readable line saying what was loaded

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


# ----------------------------------------------------------------------------- where things live

def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder for token ids and the demo tokenizer: argument > $QWEN_MINIMAL_CACHE > ~/.cache/qwen_minimal."""
    path = cache_dir or os.environ.get("QWEN_MINIMAL_CACHE") or Path.home() / ".cache" / "qwen_minimal"
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=None)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    # In a thread, because a DNS lookup ignores the socket timeout and can stall for much longer.
    ok = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when the Hugging Face hub answers within `timeout` seconds. HF_HUB_OFFLINE=1 (or
    HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE) means no without trying. The answer of a connection
    attempt is remembered for the rest of the process."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    # Behind a proxy only the proxy can be reached directly, so that is what we try.
    url = urllib.request.getproxies().get("https") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urllib.parse.urlparse(url)
    return _can_connect(url.hostname, url.port or 443, timeout)


def _offline_help(what: str) -> str:
    return (f"{what}, but the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1). "
            f"Run online once, or use local files: {SET_DATA_HINT}, and $QWEN_MINIMAL_TOKENIZER (or pass a "
            f"path) to a tokenizer folder (e.g. one with GPT-2's vocab.json and merges.txt)")


# ----------------------------------------------------------------------------- tokenizer

def load_tokenizer(name_or_path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer: argument > $QWEN_MINIMAL_TOKENIZER > hub "gpt2" (or its local HF cache)
    > an offline demo BPE trained on Python's documentation (announced with a warning).
    A local folder may hold tokenizer.json / tokenizer_config.json, or GPT-2's vocab.json + merges.txt."""
    asked = name_or_path or os.environ.get("QWEN_MINIMAL_TOKENIZER")
    if not asked:
        return _hub_tokenizer(DEFAULT_TOKENIZER, required=False) or _demo_tokenizer(cache_dir)
    path = Path(asked).expanduser()
    # A hub name looks like "gpt2" or "org/name"; what exists, or starts like a path, is a local folder.
    if path.exists() or isinstance(asked, os.PathLike) or str(asked).startswith(("/", ".", "~")):
        return _local_tokenizer(path)
    return _hub_tokenizer(str(asked), required=True)


def _local_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    if not folder.is_dir():
        raise FileNotFoundError(f"no tokenizer folder at {folder}: point $QWEN_MINIMAL_TOKENIZER (or the argument) "
                                f"at a folder with tokenizer.json, or with GPT-2's vocab.json and merges.txt")
    names = {p.name for p in folder.iterdir()}
    if names & {"tokenizer.json", "tokenizer_config.json"}:
        return AutoTokenizer.from_pretrained(folder)
    if {"vocab.json", "merges.txt"} <= names:
        # Bare GPT-2 files: AutoTokenizer cannot tell which class they belong to, so we say it.
        return GPT2TokenizerFast.from_pretrained(folder)
    raise FileNotFoundError(f"no tokenizer files in {folder}: expected tokenizer.json, or vocab.json + "
                            f"merges.txt (GPT-2). Point $QWEN_MINIMAL_TOKENIZER at such a folder")


def _hub_tokenizer(name: str, required: bool) -> PreTrainedTokenizerFast | None:
    """The hub tokenizer `name`; offline, the copy in the local Hugging Face cache if there is one.
    Missing: an error if the user asked for it by name, else None (the caller falls back)."""
    online = hub_reachable()
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=not online)
    except OSError:
        if online:
            raise
    if required:
        raise FileNotFoundError(_offline_help(f"tokenizer {name!r} is not a local folder, so it would come "
                                              f"from the hub"))
    return None


def demo_text() -> str:
    """The offline demo text: Python's own help topics (pydoc_data.topics), present in every install."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise FileNotFoundError(f"this Python has no pydoc_data for the offline demo text: {SET_DATA_HINT}") from e
    return "".join(topics[name] for name in sorted(topics))


def _announce(message: str) -> None:
    """Warn, pointing at the first caller outside this module, so that the warning shows the user's line."""
    level, frame = 1, sys._getframe(0)
    while frame.f_back and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


def _demo_tokenizer(cache_dir=None) -> PreTrainedTokenizerFast:
    """A byte-level BPE (like GPT-2's, vocabulary DEMO_VOCAB_SIZE) trained on demo_text(), kept in the cache."""
    text = demo_text()
    path = cache_folder(cache_dir) / f"demo-bpe-{DEMO_VOCAB_SIZE}-{_sha(text)}.json"
    if not path.exists():
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=DEMO_VOCAB_SIZE, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        bpe.train_from_iterator(text.splitlines(keepends=True), trainer)
        _write_atomic(path, lambda f: f.write(bpe.to_str().encode()))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS)
    tok.name_or_path = "offline demo BPE (trained on Python's help text)"
    _announce(f"OFFLINE DEMO TOKENIZER: the hub is unreachable and no tokenizer was given, so this is a "
              f"{len(tok)}-token byte-level BPE trained on Python's help text, not GPT-2's. "
              f"Set $QWEN_MINIMAL_TOKENIZER to a GPT-2 tokenizer folder for the real one.")
    return tok


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A short hash of the tokenizer's whole definition (vocabulary, merges, normalisation, special tokens)."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer: load a fast one (use_fast=True)")
    return _sha(tokenizer.backend_tokenizer.to_str() + json.dumps(tokenizer.added_tokens_encoder, sort_keys=True))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- text -> cached token ids

@dataclass
class TextSplit:
    """One split's text: `key` names it in the cache, `lines()` reads it (only on a cache miss)."""
    key: str
    description: str
    lines: Callable[[], Sequence[str]]


def tokenize_lines(lines: Iterable[str], tokenizer, batch_lines: int = 4096) -> Iterator[np.ndarray]:
    """Token ids of `lines`, each line tokenized on its own, yielded as one int64 array per batch of lines.
    Batches let the Rust tokenizer use every core without holding the whole text's ids as Python ints."""
    it = iter(lines)
    while batch := list(islice(it, batch_lines)):
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        yield np.fromiter(chain.from_iterable(ids), dtype=np.int64)


def _id_dtype(tokenizer) -> type:
    return np.uint16 if len(tokenizer) <= 2**16 else np.uint32


def token_file(split: TextSplit, tokenizer, fingerprint: str, cache_dir=None) -> Path:
    """Where the ids of `split` under this tokenizer are cached: named by both identities."""
    name = f"{_sha(split.key)}-{fingerprint}.{np.dtype(_id_dtype(tokenizer))}"
    return cache_folder(cache_dir) / "tokens" / name


def cached_tokens(split: TextSplit, tokenizer, path: Path) -> np.memmap:
    """The ids of `split` as a read-only memmap of `path`; tokenized and written there if it does not exist."""
    dtype = _id_dtype(tokenizer)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = split.lines()
        if len(lines) > 100_000:  # a first run on WikiText-103 takes minutes: say why
            print(f"Tokenizing {split.description} ({len(lines):,} lines) into {path}; later runs reuse it.",
                  file=sys.stderr)

        def write(f):
            count = 0
            for ids in tokenize_lines(lines, tokenizer):
                ids.astype(dtype).tofile(f)
                count += ids.size
            if count == 0:
                raise ValueError(f"{split.description} gives no tokens: it holds no text. {SET_DATA_HINT}")

        _write_atomic(path, write)
    return np.memmap(path, dtype=dtype, mode="r")


def _write_atomic(path: Path, write: Callable) -> None:
    # Write beside the target, then rename: an interrupted run never leaves a half-written file
    # that a later run would take for a finished one.
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.chmod(f.name, 0o644)  # temporary files are private (0600); the cache is an ordinary file
    os.replace(f.name, path)


def _file_split(role: str, files: list[Path]) -> TextSplit:
    """Whole local files; the key holds path, size and mtime, so an edited file is tokenized again."""
    identity = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return TextSplit(json.dumps([role, identity]), " + ".join(p.name for p in files),
                     lambda: [line for p in files for line in p.read_text(encoding="utf-8").splitlines(True)])


def _holdout_splits(whole: TextSplit) -> tuple[TextSplit, TextSplit]:
    """Train on the first lines of `whole`, validate on its last 1/HOLDOUT (whole lines, in order)."""
    def part(validation: bool) -> list[str]:
        lines = whole.lines()
        if len(lines) < 2:
            raise ValueError(f"{whole.description} has {len(lines)} line(s): at least 2 are needed to hold "
                             f"out validation text. {SET_DATA_HINT}")
        cut = len(lines) - max(1, len(lines) // HOLDOUT)
        return lines[cut:] if validation else lines[:cut]

    return (TextSplit(whole.key + " train", f"{whole.description} (first lines)", lambda: part(False)),
            TextSplit(whole.key + " validation", f"{whole.description} (last lines)", lambda: part(True)))


def _local_splits(path: Path) -> tuple[TextSplit, TextSplit, str]:
    """Train and validation text from a local file or folder, and a line saying which files play which role."""
    if not path.exists():
        raise FileNotFoundError(f"no file or folder at {path}: {SET_DATA_HINT}; or name a hub WikiText "
                                f"config ({', '.join(HUB_CONFIGS)}); or set nothing for WikiText-103 from the hub")
    if path.is_file():
        named, files = {}, [path]
    else:
        named = {role: next((path / n for n in names if (path / n).is_file()), None)
                 for role, names in SPLIT_FILES.items()}
        files = [p for p in named.values() if p] or sorted(p for p in path.glob("*.txt") if p.is_file())
    if not files:
        raise ValueError(f"no usable text files in {path}: {SET_DATA_HINT}")
    for p in files:
        if p.stat().st_size == 0:
            raise ValueError(f"{p} is empty: put text in it, or remove it so that it is not used")
    train, valid, test = (named.get(role) for role in SPLIT_FILES)
    if train and (valid or test):
        pair, note = (train, valid or test), f"train {train.name}, validation {(valid or test).name}"
    elif valid and test:
        pair, note = (valid, test), f"no train file, so training on {valid.name} and validating on {test.name}"
    else:  # one file, plain .txt files, or a single split file: hold out the end of the text
        names = ", ".join(p.name for p in files)
        return (*_holdout_splits(_file_split("all", files)),
                f"{path} ({names}; validation: the last 1/{HOLDOUT} of the lines)")
    return _file_split("train", [pair[0]]), _file_split("valid", [pair[1]]), f"{path} ({note})"


def _hub_splits(config: str) -> tuple[TextSplit, TextSplit]:
    def split(name):
        return TextSplit(f"hub {HUB_DATASET} {config} {name}", f"{HUB_DATASET} {config} {name}",
                         lambda: _hub_lines(config, name))
    return split("train"), split("validation")


def _hub_lines(config: str, split: str) -> Sequence[str]:
    import datasets  # slow to import, and needed only on the first (online) run
    return datasets.load_dataset(HUB_DATASET, config, split=split)["text"]


def _demo_splits() -> tuple[TextSplit, TextSplit]:
    text = demo_text()
    return _holdout_splits(TextSplit(f"demo pydoc_data.topics {_sha(text)}", "Python's help text (pydoc_data.topics)",
                                     lambda: text.splitlines(keepends=True)))


# ----------------------------------------------------------------------------- corpus

def load_corpus(path: str | os.PathLike | None = None, tokenizer=None,
                cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Train and validation token ids, with the tokenizer and a line saying where they came from.

    path: a local folder or file, or a hub WikiText config name (one of HUB_CONFIGS); default
      $QWEN_MINIMAL_DATA, else WikiText-103 from the hub (or its ids already in the cache), else the
      offline demo text (announced with a warning).
    tokenizer: a tokenizer, or a name/path for load_tokenizer(); default load_tokenizer().
    cache_dir: where token ids are kept; default $QWEN_MINIMAL_CACHE, else ~/.cache/qwen_minimal.
    """
    asked = path or os.environ.get("QWEN_MINIMAL_DATA")
    if not asked:
        hub_config = DEFAULT_CONFIG
    else:
        hub_config = str(asked) if str(asked) in HUB_CONFIGS else None
    # Local paths are checked here, so that a bad one fails at once, before the tokenizer is loaded.
    local = None if hub_config else _local_splits(Path(asked).expanduser())
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, cache_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)

    if local:
        train, valid, where = local
        source = f"local text {where}"
    else:
        train, valid = _hub_splits(hub_config)
        source = f"{HUB_DATASET} {hub_config} from the Hugging Face hub"
        cached = all(token_file(s, tokenizer, fingerprint, cache_dir).exists() for s in (train, valid))
        if not cached and not hub_reachable():
            if asked:
                raise FileNotFoundError(_offline_help(f"the hub dataset {hub_config!r} was asked for and its "
                                                      f"tokens are not in the cache"))
            train, valid = _demo_splits()
            source = ("OFFLINE DEMO text: Python's help text (pydoc_data.topics), not WikiText, because the hub "
                      "is unreachable and no data was given")
            _announce(f"{source}. For the real corpus, {SET_DATA_HINT}.")
    train_ids, valid_ids = (cached_tokens(s, tokenizer, token_file(s, tokenizer, fingerprint, cache_dir))
                            for s in (train, valid))
    source += (f"; tokenizer {tokenizer.name_or_path} ({len(tokenizer):,} tokens); "
               f"{len(train_ids):,} train / {len(valid_ids):,} validation tokens")
    return Corpus(train_ids, valid_ids, tokenizer, source)


# ----------------------------------------------------------------------------- blocks

def _check_block_args(data, batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size={batch_size} and block_size={block_size} must both be at least 1")
    if len(data) <= block_size:
        raise ValueError(f"{len(data)} tokens are too few for block_size={block_size}: a block needs "
                         f"block_size + 1 tokens (inputs and their next-token targets); lower block_size")


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    # Pinned memory lets the copy to a GPU run asynchronously, overlapping the previous step.
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_blocks(data: np.ndarray, batch_size: int, block_size: int,
                  generator: torch.Generator | None = None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: batch_size blocks of block_size tokens at random offsets (as in nanoGPT).
    Returns x, y of shape [batch_size, block_size], int64; y[:, t] is the token that follows x[:, t] in the
    text, so y is x shifted left by one token. `generator` (a CPU torch.Generator) makes the offsets repeatable."""
    _check_block_args(data, batch_size, block_size)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    rows = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in starts]).astype(np.int64))
    return _to_device(rows[:, :-1].contiguous(), device), _to_device(rows[:, 1:].contiguous(), device)


def sequential_blocks(data: np.ndarray, batch_size: int, block_size: int, device="cpu",
                      max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches: the text cut into consecutive, non-overlapping blocks of block_size tokens, in order,
    batch_size blocks per batch (the last batch may be smaller), at most max_batches batches. Tokens after
    the last whole block are left out. Yields x, y as in random_blocks."""
    _check_block_args(data, batch_size, block_size)
    num_blocks = (len(data) - 1) // block_size
    firsts = range(0, num_blocks, batch_size)[:max_batches]  # the first block of each batch

    def batches():
        for first in firsts:
            a, z = first * block_size, min(first + batch_size, num_blocks) * block_size
            x = torch.from_numpy(data[a:z].astype(np.int64)).view(-1, block_size)
            y = torch.from_numpy(data[a + 1:z + 1].astype(np.int64)).view(-1, block_size)
            yield _to_device(x, device), _to_device(y, device)

    return batches()  # arguments are checked now, not at the first next()
