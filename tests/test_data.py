"""qwen_minimal.data: ids equal the tokenizer's own on the whole files, the cache is
reused, blocks are shifted pairs, bad input fails fast with a clear error, and the
offline demo fallback works. Runs offline, on the corpus and tokenizer of the fixtures
(conftest.py): the shared WikiText sample and GPT-2's tokenizer where the machine has
them, else a WikiText-format corpus and a byte-level BPE made from Python's help text.
"""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_minimal.data import (
    DemoDataWarning,
    load_corpus,
    load_tokenizer,
    random_blocks,
    sequential_blocks,
    text,
    token_cache,
)
from qwen_minimal.errors import InputError, MissingInputError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def corpus(cache, text_folder, tokenizer_folder):
    return load_corpus(text_folder, tokenizer_folder, cache_dir=cache)


@pytest.fixture(scope="module")
def tok(tokenizer_folder):
    return load_tokenizer(tokenizer_folder)


def test_ids_equal_the_tokenizers_own_on_the_whole_files(corpus, tok, text_folder):
    # The folder has no train file: valid.txt is the training text and test.txt the
    # validation text.
    train_text = (text_folder / "valid.txt").read_text(encoding="utf-8")
    np.testing.assert_array_equal(corpus.train, tok(train_text)["input_ids"])
    # A prefix of whole lines is enough for the second file (tokenizing it all would
    # double the test's time).
    head = "".join(
        (text_folder / "test.txt")
        .read_text(encoding="utf-8")
        .splitlines(keepends=True)[:500]
    )
    expected = tok(head)["input_ids"]
    np.testing.assert_array_equal(corpus.validation[: len(expected)], expected)
    assert corpus.train.dtype == np.uint16 and corpus.vocab_size == len(tok)
    assert "training on valid.txt and validating on test.txt" in corpus.source
    assert not corpus.demo_text and not corpus.demo_tokenizer


def test_gpt2_tokenizer_has_gpt2s_vocabulary_and_end_of_text(gpt2_tokenizer):
    assert len(gpt2_tokenizer) == 50257 and gpt2_tokenizer.eos_token == "<|endoftext|>"
    assert gpt2_tokenizer.eos_token_id == 50256
    assert gpt2_tokenizer(" The quick brown fox \n")["input_ids"] == [
        383,
        2068,
        7586,
        21831,
        220,
        198,
    ]
    # 50,257 ids fit in 16 bits
    assert token_cache.id_dtype(gpt2_tokenizer) == np.uint16


def test_second_load_reuses_the_cache_and_honours_the_env_vars(
    corpus, cache, monkeypatch, text_folder, tokenizer_folder
):
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached ids should have been reused")

    monkeypatch.setattr(token_cache, "tokenize_lines", no_tokenizing)
    monkeypatch.setenv("QWEN_MINIMAL_DATA", str(text_folder))
    monkeypatch.setenv("QWEN_MINIMAL_TOKENIZER", str(tokenizer_folder))
    monkeypatch.setenv("QWEN_MINIMAL_CACHE", str(cache))
    again = load_corpus()
    assert again.train.filename == corpus.train.filename
    assert again.validation.filename == corpus.validation.filename
    np.testing.assert_array_equal(again.train, corpus.train)


def test_edited_file_is_tokenized_again(tmp_path, tok):
    (tmp_path / "train.txt").write_text(" Hello world \n = Heading = \n")
    (tmp_path / "valid.txt").write_text(" The quick brown fox \n")
    first = load_corpus(tmp_path, tok, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(
        first.validation, tok(" The quick brown fox \n")["input_ids"]
    )
    (tmp_path / "valid.txt").write_text(" Hello world \n")
    second = load_corpus(tmp_path, tok, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(
        second.validation, tok(" Hello world \n")["input_ids"]
    )
    np.testing.assert_array_equal(second.train, first.train)


def test_a_damaged_token_cache_is_tokenized_again_saying_so(tmp_path, tok, capsys):
    (tmp_path / "train.txt").write_text(" Hello world \n = Heading = \n")
    (tmp_path / "valid.txt").write_text(" The quick brown fox \n")
    first = load_corpus(tmp_path, tok, cache_dir=tmp_path / "cache")
    ids = np.array(first.validation)
    file = Path(first.validation.filename)
    del first
    file.write_bytes(file.read_bytes()[:-1])  # a copy cut short
    again = load_corpus(tmp_path, tok, cache_dir=tmp_path / "cache")
    assert f"The token cache {file} is damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(again.validation, ids)


def test_plain_text_files_hold_out_their_last_lines(tmp_path, tok):
    lines = [f" line {i} of some text .\n" for i in range(40)]
    (tmp_path / "a.txt").write_text("".join(lines[:25]))
    (tmp_path / "b.txt").write_text("".join(lines[25:]))
    corpus = load_corpus(tmp_path, tok, cache_dir=tmp_path / "cache")
    assert tok.decode(corpus.train) == "".join(lines[:36])
    assert tok.decode(corpus.validation) == "".join(lines[36:])
    assert "a.txt, b.txt" in corpus.source


def test_hub_corpus_is_cached_and_then_used_offline(tmp_path, monkeypatch, tok):
    from qwen_minimal.data import corpus as corpus_module

    for var in ("QWEN_MINIMAL_DATA", "QWEN_MINIMAL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    # A stand-in for the hub: rows as the datasets library gives WikiText (blank lines
    # are empty strings).
    rows = {
        "train": [" = Cats = \n", "", " The cat sat on the mat .\n"],
        "validation": [" The dog ran .\n"],
    }
    monkeypatch.setattr(corpus_module, "hub_reachable", lambda timeout=1.5: True)
    monkeypatch.setattr(text, "hub_lines", lambda config, split: rows[split])
    online = load_corpus(tokenizer=tok, cache_dir=tmp_path)
    assert online.source.startswith("Salesforce/wikitext wikitext-103-v1")
    np.testing.assert_array_equal(
        online.train, tok("".join(rows["train"]))["input_ids"]
    )

    def no_hub(config, split):
        raise AssertionError("the cached ids should have been used")

    monkeypatch.setattr(corpus_module, "hub_reachable", lambda timeout=1.5: False)
    monkeypatch.setattr(text, "hub_lines", no_hub)
    # nothing asked, hub down: WikiText from the cache
    offline = load_corpus(tokenizer=tok, cache_dir=tmp_path)
    assert (
        offline.train.filename == online.train.filename
        and offline.source.startswith("Salesforce/wikitext")
    )


def test_random_blocks_are_next_token_pairs_at_seeded_offsets():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = random_blocks(tokens, 6, 16, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (6, 16) and x.dtype == y.dtype == torch.int64
    # with 0, 1, 2, ... as the text, the next token is x + 1
    assert torch.equal(y, x + 1)
    starts = torch.randint(1000 - 16, (6,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(x[:, 0], starts)
    x2, _ = random_blocks(tokens, 6, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)


def test_sequential_blocks_cover_the_text_in_order():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = list(sequential_blocks(tokens, 4, 64))
    # 999 // 64 = 15 blocks
    assert [tuple(x.shape) for x, _ in batches] == [
        (4, 64),
        (4, 64),
        (4, 64),
        (3, 64),
    ]
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert torch.equal(x.flatten(), torch.arange(15 * 64))
    assert torch.equal(y, x + 1)
    assert len(list(sequential_blocks(tokens, 4, 64, max_batches=2))) == 2


def test_blocks_longer_than_the_text_are_refused():
    with pytest.raises(ValueError, match="lower block_size"):
        random_blocks(np.arange(10, dtype=np.uint16), 2, 10)
    with pytest.raises(ValueError, match="lower block_size"):
        sequential_blocks(np.arange(10, dtype=np.uint16), 2, 10)


def fails_fast(error, match, call):
    """`call()` raises `error` with a message matching `match` within 2 s (a guard
    against hangs)."""
    start = time.monotonic()
    with pytest.raises(error, match=match):
        call()
    assert time.monotonic() - start < 2.0


def test_bad_input_fails_fast_with_a_clear_error(tmp_path, tok):
    cache = tmp_path / "cache"
    fails_fast(
        MissingInputError,
        "no file or folder at .*QWEN_MINIMAL_DATA",
        lambda: load_corpus(tmp_path / "missing", tok, cache_dir=cache),
    )
    (tmp_path / "empty").mkdir()
    fails_fast(
        InputError,
        "no usable text files",
        lambda: load_corpus(tmp_path / "empty", tok, cache_dir=cache),
    )
    (tmp_path / "empty" / "train.txt").write_text("")
    fails_fast(
        InputError,
        "train.txt is empty",
        lambda: load_corpus(tmp_path / "empty", tok, cache_dir=cache),
    )
    fails_fast(
        MissingInputError,
        "hub dataset 'wikitext-103-v1' was asked for.*unreachable",
        lambda: load_corpus("wikitext-103-v1", tok, cache_dir=cache),
    )
    fails_fast(
        MissingInputError,
        "would come from the hub.*unreachable",
        lambda: load_tokenizer("qwen-minimal/no-such-tokenizer"),
    )
    fails_fast(
        MissingInputError,
        "no tokenizer files",
        lambda: load_tokenizer(tmp_path / "empty"),
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"caf\xe9 au lait\nsecond line\n",
            r"is not UTF-8 text \(byte 0xe9 at offset 3\)",
        ),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "is not UTF-8 text"),
        (b"line one\n\0\0\0\nline two\n", "holds NUL bytes at offset 9"),
    ],
    ids=["latin-1", "binary", "NUL bytes"],
)
def test_a_data_file_that_is_not_utf8_text_is_named(tmp_path, tok, content, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_bytes(content)
    fails_fast(
        InputError,
        f"{tmp_path / 'data' / 'notes.txt'} {message}",
        lambda: load_corpus(tmp_path / "data", tok, cache_dir=tmp_path / "cache"),
    )


def test_a_damaged_tokenizer_file_is_named(tmp_path, tokenizer_folder):
    shutil.copytree(tokenizer_folder, tmp_path / "tok")
    damaged = next(
        tmp_path / "tok" / name
        for name in ("tokenizer.json", "vocab.json")
        if (tmp_path / "tok" / name).exists()
    )
    damaged.write_text('{"a": 0, ')
    fails_fast(
        InputError,
        f"the tokenizer in {tmp_path / 'tok'} cannot be read",
        lambda: load_tokenizer(tmp_path / "tok"),
    )


def test_offline_demo_fallback_is_announced(tmp_path, monkeypatch):
    for var in ("QWEN_MINIMAL_DATA", "QWEN_MINIMAL_TOKENIZER", "QWEN_MINIMAL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.warns(DemoDataWarning, match="OFFLINE DEMO") as warned:
        corpus = load_corpus(cache_dir=tmp_path)
    # one announcement for the demo text and the demo tokenizer together
    assert len(warned) == 1
    assert (
        corpus.source.startswith("OFFLINE DEMO")
        and corpus.demo_text
        and corpus.demo_tokenizer
    )
    lines = text.demo_text().splitlines(keepends=True)
    # The held-out text decodes back to the demo text's last lines: the pipeline loses
    # nothing.
    assert corpus.tokenizer.decode(corpus.validation) == "".join(
        lines[len(lines) - len(lines) // 10 :]
    )
    assert len(corpus.train) > 50_000 and int(corpus.train.max()) < corpus.vocab_size
    x, y = random_blocks(
        corpus.train, 2, 32, generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (2, 32)
