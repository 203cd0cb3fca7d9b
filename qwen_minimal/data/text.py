"""Where the training text comes from: local WikiText-format or plain text files,
WikiText on the Hugging Face hub, or the offline demo text (Python's own help pages).
Each source gives a train and a validation TextSplit.

How a split becomes ids (token_cache.py): every line is tokenized on its own, newline
included, and the ids are concatenated. Nothing is added between lines or articles (no
<|endoftext|>): WikiText keeps its " = Heading = " lines, which already mark where an
article starts. On the WikiText files this equals tokenizing the whole file at once (the
tests check it). The hub's WikiText gives blank lines as empty strings (no tokens),
where the raw files have " \\n".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import InputError, MissingInputError
from ..files import short_hash
from .hub import SET_DATA_HINT
from .token_cache import TextSplit

HUB_DATASET = "Salesforce/wikitext"
HUB_CONFIGS = (
    "wikitext-103-v1",
    "wikitext-103-raw-v1",
    "wikitext-2-v1",
    "wikitext-2-raw-v1",
)
DEFAULT_CONFIG = "wikitext-103-v1"
# File names of the splits in a local folder: the WikiText archives' names, then short
# ones.
SPLIT_FILES = {
    "train": ("wiki.train.tokens", "wiki.train.raw", "train.txt"),
    "valid": ("wiki.valid.tokens", "wiki.valid.raw", "valid.txt", "validation.txt"),
    "test": ("wiki.test.tokens", "wiki.test.raw", "test.txt"),
}
HOLDOUT = (
    10  # with no split files, the last 1/HOLDOUT of the lines is the validation text
)


def demo_text() -> str:
    """The offline demo text: Python's own help topics (pydoc_data.topics), present in
    every install."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:
        raise MissingInputError(
            f"this Python has no pydoc_data for the offline demo text: {SET_DATA_HINT}"
        ) from e
    return "".join(topics[name] for name in sorted(topics))


def _file_split(role: str, files: list[Path]) -> TextSplit:
    """Whole local files; the key holds path, size and mtime, so an edited file is
    tokenized again."""
    identity = [
        [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
    return TextSplit(
        json.dumps([role, identity]),
        " + ".join(p.name for p in files),
        lambda: [line for p in files for line in read_text(p).splitlines(True)],
    )


def read_text(path: Path) -> str:
    """The text of a UTF-8 file; InputError naming it if it is binary or in another
    encoding."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}): convert it to UTF-8 (e.g. iconv -t utf-8), or remove it "
            "from the data folder"
        ) from None
    if "\0" in text:  # valid UTF-8 all the same: an image, an archive, a database
        raise InputError(
            f"{path} holds NUL bytes at offset {text.index(chr(0))}, so it is a binary "
            "file, not text: remove it from the data folder"
        )
    return text


def holdout_splits(whole: TextSplit) -> tuple[TextSplit, TextSplit]:
    """Train on the first lines of `whole`, validate on its last 1/HOLDOUT (whole lines,
    in order)."""

    def part(validation: bool) -> list[str]:
        lines = whole.lines()
        if len(lines) < 2:
            raise InputError(
                f"{whole.description} has {len(lines)} line(s): at least 2 are "
                "needed to hold "
                f"out validation text. {SET_DATA_HINT}"
            )
        cut = len(lines) - max(1, len(lines) // HOLDOUT)
        return lines[cut:] if validation else lines[:cut]

    return (
        TextSplit(
            whole.key + " train",
            f"{whole.description} (first lines)",
            lambda: part(False),
        ),
        TextSplit(
            whole.key + " validation",
            f"{whole.description} (last lines)",
            lambda: part(True),
        ),
    )


def local_splits(path: Path) -> tuple[TextSplit, TextSplit, str]:
    """Train and validation text from a local file or folder, and a line saying which
    files play which role."""
    if not path.exists():
        raise MissingInputError(
            f"no file or folder at {path}: {SET_DATA_HINT}; or name a hub WikiText "
            f"config ({', '.join(HUB_CONFIGS)}); or set nothing for WikiText-103 "
            "from the hub"
        )
    if path.is_file():
        named, files = {}, [path]
    else:
        named = {
            role: next((path / n for n in names if (path / n).is_file()), None)
            for role, names in SPLIT_FILES.items()
        }
        files = [p for p in named.values() if p] or sorted(
            p for p in path.glob("*.txt") if p.is_file()
        )
    if not files:
        raise InputError(f"no usable text files in {path}: {SET_DATA_HINT}")
    for p in files:
        if p.stat().st_size == 0:
            raise InputError(
                f"{p} is empty: put text in it, or remove it so that it is not used"
            )
    train, valid, test = (named.get(role) for role in SPLIT_FILES)
    if train and (valid or test):
        pair, note = (
            (train, valid or test),
            f"train {train.name}, validation {(valid or test).name}",
        )
    elif valid and test:
        pair, note = (
            (valid, test),
            f"no train file, so training on {valid.name} and validating on {test.name}",
        )
    # one file, plain .txt files, or a single split file: hold out the end of the text
    else:
        names = ", ".join(p.name for p in files)
        return (
            *holdout_splits(_file_split("all", files)),
            f"{path} ({names}; validation: the last 1/{HOLDOUT} of the lines)",
        )
    return (
        _file_split("train", [pair[0]]),
        _file_split("valid", [pair[1]]),
        f"{path} ({note})",
    )


def hub_splits(config: str) -> tuple[TextSplit, TextSplit]:
    def split(name):
        return TextSplit(
            f"hub {HUB_DATASET} {config} {name}",
            f"{HUB_DATASET} {config} {name}",
            lambda: hub_lines(config, name),
        )

    return split("train"), split("validation")


def hub_lines(config: str, split: str) -> Sequence[str]:
    import datasets  # slow to import, and needed only on the first (online) run

    return datasets.load_dataset(HUB_DATASET, config, split=split)["text"]


def demo_splits() -> tuple[TextSplit, TextSplit]:
    text = demo_text()
    return holdout_splits(
        TextSplit(
            f"demo pydoc_data.topics {short_hash(text)}",
            "Python's help text (pydoc_data.topics)",
            lambda: text.splitlines(keepends=True),
        )
    )
