"""What the tests share: a corpus and a tokenizer, whichever the machine has.

`text_folder` and `tokenizer_folder` are the offline stand-ins for WikiText-103 and
GPT-2's tokenizer when $QWEN_MINIMAL_DATA / $QWEN_MINIMAL_TOKENIZER are set (the
Makefile sets them when ../shared exists) or ../shared is beside the repository;
otherwise a small WikiText-format corpus made from Python's own help text (which every
Python install has) and a byte-level BPE tokenizer trained on it, made once per test
run. The data pipeline's contract is tested against whichever the fixtures give; only
the few checks about GPT-2 itself need `gpt2_tokenizer`, which skips, saying how to run
them, where GPT-2's tokenizer is not at hand.
"""

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Lets tests import their shared helpers (reference.py) by name.
sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STAND_INS = {
    "QWEN_MINIMAL_DATA": SHARED / "data" / "wikitext-2",
    "QWEN_MINIMAL_TOKENIZER": SHARED / "tokenizers" / "gpt2",
}
GPT2_VOCAB_SIZE, GPT2_EOS_ID = 50257, 50256
HOW_TO_GET_GPT2 = (
    "needs GPT-2's tokenizer: set QWEN_MINIMAL_TOKENIZER to a folder with GPT-2's "
    "vocab.json and "
    "merges.txt, or let the tests reach the Hugging Face hub (unset HF_HUB_OFFLINE)"
)


def pytest_configure(config):
    """One token cache for the whole test run, in a temporary folder, unless the caller
    chose one ($QWEN_MINIMAL_CACHE, as .ci/run does): the tests never write into the
    user's ~/.cache."""
    if not os.environ.get("QWEN_MINIMAL_CACHE"):
        folder = tempfile.mkdtemp(prefix="qwen-minimal-tests-")
        os.environ["QWEN_MINIMAL_CACHE"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def stand_in(variable: str) -> Path | None:
    """The folder named by `variable`, else its default in ../shared, else None. A
    variable that names a folder that does not exist is an error, not a reason to
    quietly test something else."""
    if os.environ.get(variable):
        path = Path(os.environ[variable])
        if not path.exists():
            raise FileNotFoundError(
                f"{variable}={path} does not exist: fix or unset it"
            )
        return path
    return STAND_INS[variable] if STAND_INS[variable].exists() else None


def wikitext_lines(text: str) -> list[str]:
    """Text written the way WikiText's word-level files are: ' = Title = ' headings, a
    space around every punctuation mark, ' @-@ ' inside hyphenated words, each paragraph
    on one line that starts with a space, blank lines as ' '."""
    lines = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = " ".join(paragraph.split())
        if not words or set(words) <= set("*=-"):
            continue
        words = re.sub(r"(\w)-(\w)", r"\1 @-@ \2", words)
        words = " ".join(re.sub(r"([^\w\s@])", r" \1 ", words).split())
        lines += [f" {words} \n", " \n"]
    return lines


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory) -> Path:
    """A folder with WikiText-format valid.txt and test.txt (the layout of
    ../shared/data/wikitext-2)."""
    found = stand_in("QWEN_MINIMAL_DATA")
    if found:
        return found
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("wikitext-format")
    names = sorted(topics)
    for file, part in (
        ("valid.txt", names[: len(names) * 2 // 3]),
        ("test.txt", names[len(names) * 2 // 3 :]),
    ):
        lines = []
        for name in part:
            lines += [
                " \n",
                f" = {name.replace('-', ' ').title()} = \n",
                " \n",
                *wikitext_lines(topics[name]),
            ]
        (folder / file).write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory, text_folder) -> Path:
    """A tokenizer folder: GPT-2's files (the stand-in), else a byte-level BPE trained
    here on text_folder."""
    found = stand_in("QWEN_MINIMAL_TOKENIZER")
    if found:
        return found
    from transformers import PreTrainedTokenizerFast

    from qwen_minimal.data.tokenizer import EOS, train_byte_level_bpe

    lines = (
        (text_folder / "valid.txt")
        .read_text(encoding="utf-8")
        .splitlines(keepends=True)
    )
    folder = tmp_path_factory.mktemp("byte-level-bpe")
    PreTrainedTokenizerFast(
        tokenizer_object=train_byte_level_bpe(lines, 4096), eos_token=EOS
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_tokenizer(tokenizer_folder):
    """GPT-2's own tokenizer: the stand-in if it is GPT-2's, else from the hub if it can
    be reached; else skip."""
    from qwen_minimal.data import hub_reachable, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder)
    if len(tokenizer) == GPT2_VOCAB_SIZE and tokenizer.eos_token_id == GPT2_EOS_ID:
        return tokenizer
    if hub_reachable():
        return load_tokenizer("gpt2")
    pytest.skip(HOW_TO_GET_GPT2)


@pytest.fixture
def offline_data(monkeypatch, text_folder, tokenizer_folder):
    """The loaders' default data and tokenizer are the fixtures' (for code and
    subprocesses that take no path), and the hub is off."""
    monkeypatch.setenv("QWEN_MINIMAL_DATA", str(text_folder))
    monkeypatch.setenv("QWEN_MINIMAL_TOKENIZER", str(tokenizer_folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
