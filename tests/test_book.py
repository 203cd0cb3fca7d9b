"""qwen_minimal.book: a run trained once into the cache and loaded afterwards, the note
that says which data a page ran on (an admonition on the offline demo corpus), and the
chapters' figure settings. Runs offline."""

import copy
import inspect
import textwrap
import warnings
from types import SimpleNamespace

import IPython.display
import matplotlib
import pytest
import torch
from test_train import micro_config

from qwen_minimal import book
from qwen_minimal.data import DemoDataWarning, load_corpus
from qwen_minimal.data.tokenizer import DEMO_NAME
from qwen_minimal.training import distributed, loop
from qwen_minimal.training.expert_parallel import ExpertParallelExperts

# the fixtures' corpus and tokenizer are the defaults
pytestmark = pytest.mark.usefixtures("offline_data")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_MINIMAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def trainings(monkeypatch):
    """The calls train_once makes to train(): (config, resume) pairs."""
    calls = []

    def recording_train(config, resume=False):
        calls.append((config, resume))
        return loop.train(config, resume=resume)

    monkeypatch.setattr(book, "train", recording_train)
    return calls


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(
            "train_once trained although a finished run of these settings is in the "
            "cache"
        )

    monkeypatch.setattr(book, "train", fail)


def test_a_run_is_trained_once_then_loaded(cache, tmp_path, monkeypatch, trainings):
    config = micro_config(tmp_path / "not used")
    first = book.train_once(config)
    assert len(trainings) == 1 and trainings[0][1] is False
    assert (
        first.out_dir.parent == cache / book.BOOK_RUNS
        and not (tmp_path / "not used").exists()
    )
    assert first.step == config.max_steps

    forbid_training(monkeypatch)
    # out_dir and progress do not change what is trained, so they do not ask for another
    # run.
    for same in (config, micro_config(tmp_path / "elsewhere", progress=True)):
        again = book.train_once(same)
        assert (
            again.out_dir == first.out_dir
            and again.step == first.step
            and not again.interrupted
        )
        assert again.history == first.history
        # vocab_size set to the tokenizer's
        assert again.config.model == first.config.model
        first_weights, loaded_weights = (
            first.model.state_dict(),
            again.model.state_dict(),
        )
        assert first_weights.keys() == loaded_weights.keys()
        assert all(
            torch.equal(first_weights[k], loaded_weights[k]) for k in first_weights
        )
        text = "The tower is 324 metres tall."
        assert again.tokenizer.encode(text) == first.tokenizer.encode(text)


def test_another_setting_or_other_data_trains_anew(
    cache, tmp_path, trainings, text_folder
):
    first = book.train_once(micro_config(tmp_path))
    reseeded = book.train_once(micro_config(tmp_path, seed=7))
    assert len(trainings) == 2 and reseeded.out_dir != first.out_dir
    assert reseeded.history != first.history
    # The same settings on other text: the token files differ, and so does the folder.
    other_text = tmp_path / "other.txt"
    other_text.write_text(
        (text_folder / "test.txt").read_text(encoding="utf-8")[:200_000],
        encoding="utf-8",
    )
    other = book.train_once(micro_config(tmp_path, data=str(other_text)))
    assert len(trainings) == 3 and other.out_dir not in (
        first.out_dir,
        reseeded.out_dir,
    )


def test_an_unfinished_run_is_resumed(cache, tmp_path, trainings):
    config = micro_config(tmp_path)
    uninterrupted = loop.train(micro_config(tmp_path / "uninterrupted"))
    folder = book.run_folder(config, load_corpus())
    loop.train(micro_config(folder), stop_at=3)  # as if stopped by Ctrl-C at step 3
    resumed = book.train_once(config)
    assert [resume for _, resume in trainings] == [
        True
    ] and resumed.step == config.max_steps
    losses = [
        [r["lm_loss"] for r in run.history if r["kind"] == "train"]
        for run in (uninterrupted, resumed)
    ]
    assert losses[0] == losses[1]


def shown_notes(monkeypatch, corpus) -> list[dict]:
    shown = []
    monkeypatch.setattr(
        IPython.display, "display", lambda bundle, raw: shown.append(bundle)
    )
    book.corpus_note(corpus)
    assert len(shown) == 1
    return shown[0]


def test_the_note_of_a_real_corpus_is_one_line_naming_it(monkeypatch, tokenizer_folder):
    corpus = load_corpus()
    note = shown_notes(monkeypatch, corpus)
    assert note["text/markdown"].startswith(
        ":::{admonition} Data\n:class: note corpus-note\n"
    )
    assert (
        book.DEMO_CLASS not in note["text/markdown"]
        and book.DEMO_CLASS not in note["text/html"]
    )
    assert (
        f"tokenized with `{tokenizer_folder.name}` ({corpus.vocab_size:,} tokens)"
        in note["text/markdown"]
    )
    assert (
        f"{len(corpus.train):,} training and {len(corpus.validation):,} validation "
        "tokens" in note["text/plain"]
    )
    # title, class, one line, closing fence
    assert note["text/markdown"].count("\n") == 4


@pytest.mark.parametrize(
    "demo_text, demo_tokenizer, missing",
    [
        (True, True, "without WikiText-103 and GPT-2's tokenizer"),
        (True, False, "without WikiText-103:"),
        (False, True, "without GPT-2's tokenizer:"),
    ],
)
def test_the_demo_corpus_gets_an_admonition(
    monkeypatch, demo_text, demo_tokenizer, missing
):
    corpus = copy.copy(load_corpus())
    corpus.demo_text = demo_text
    if demo_tokenizer:
        corpus.tokenizer = copy.copy(corpus.tokenizer)
        corpus.tokenizer.name_or_path = DEMO_NAME
    note = shown_notes(monkeypatch, corpus)
    markdown, page = note["text/markdown"], note["text/html"]
    assert markdown.startswith(":::{admonition} Built on the offline demo corpus\n")
    assert (
        f":class: warning {book.DEMO_CLASS} {book.NOTE_CLASS}\n" in markdown
        and markdown.endswith(":::\n")
    )
    assert f'class="admonition warning {book.DEMO_CLASS} {book.NOTE_CLASS}"' in page
    assert missing in markdown
    assert ("Python's own help text" in markdown) == demo_text
    assert (
        f"a byte-level BPE of {corpus.vocab_size:,} tokens" in markdown
    ) == demo_tokenizer
    assert (
        "`$QWEN_MINIMAL_DATA`" in markdown
        and "<code>$QWEN_MINIMAL_TOKENIZER</code>" in page
    )


@pytest.mark.parametrize(
    "text_name, demo_text, label",
    [
        ("Salesforce/wikitext wikitext-103-v1", False, "WikiText-103"),
        ("Salesforce/wikitext wikitext-2-raw-v1", False, "WikiText-2 (raw)"),
        ("/data/corpora/wikitext-2", False, "the local text wikitext-2"),
        ("Python's help text (the offline demo corpus)", True, "Python's help text"),
    ],
)
def test_text_label(text_name, demo_text, label):
    assert (
        book.text_label(SimpleNamespace(text_name=text_name, demo_text=demo_text))
        == label
    )


def test_tokenizer_label():
    def corpus(name):
        return SimpleNamespace(
            tokenizer=SimpleNamespace(name_or_path=name),
            demo_tokenizer=name == DEMO_NAME,
        )

    assert book.tokenizer_label(corpus("gpt2")) == "gpt2"
    assert book.tokenizer_label(corpus("/shared/tokenizers/gpt2/")) == "gpt2"
    assert book.tokenizer_label(corpus(DEMO_NAME)) == "the demo BPE"


def test_setup_silences_only_the_demo_warning_and_sizes_figures_for_the_column():
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context():
        warnings.simplefilter("always")
        book.setup()
        warnings.warn("the demo corpus", DemoDataWarning)
        warnings.warn("something else", UserWarning)
        width_px = (
            matplotlib.rcParams["figure.figsize"][0] * matplotlib.rcParams["figure.dpi"]
        )
    assert [str(w.message) for w in caught] == ["something else"]
    assert width_px <= 740  # the book's text column at a 1280-pixel-wide window


def test_wrap_breaks_only_long_lines_and_keeps_their_indentation():
    long_line = "    " + " ".join(["word"] * 40)
    text = f" = Heading = \n\n{long_line}\nshort line"
    lines = book.wrap(text, width=50).split("\n")
    assert lines[:3] == [" = Heading = ", "", lines[2]] and lines[-1] == "short line"
    folded = lines[2:-1]
    assert len(folded) > 1 and all(
        len(line) <= 50 and line.startswith("    word") for line in folded
    )
    assert " ".join(line.strip() for line in folded) == long_line.strip()


@pytest.mark.parametrize(
    "obj",
    [distributed.parallelize, ExpertParallelExperts.forward, loop.train],
    ids=lambda obj: obj.__qualname__,
)
def test_the_package_code_a_chapter_shows_is_the_code_and_fits_the_page(obj):
    shown = book.source(obj)
    assert isinstance(shown, IPython.display.Code)
    assert shown.data == textwrap.dedent(inspect.getsource(obj))
    assert all(len(line) <= book.COLUMNS for line in shown.data.splitlines()), (
        shown.data
    )


def test_glue_hands_every_value_to_myst_nb_without_showing_it(monkeypatch):
    import myst_nb

    glued = []
    monkeypatch.setattr(
        myst_nb,
        "glue",
        lambda name, value, display: glued.append((name, value, display)),
    )
    book.glue({"share": "58%", "tokens": 8192})
    assert glued == [("share", "58%", False), ("tokens", 8192, False)]


def test_a_quiet_run_says_one_line_instead_of_its_log(cache, tmp_path, capsys):
    config = micro_config(tmp_path)
    book.train_once(config, quiet=True)
    trained = capsys.readouterr().out.splitlines()
    book.train_once(config, quiet=True)
    loaded = capsys.readouterr().out.splitlines()
    assert len(trained) == 1 and trained[0].startswith(
        f"Trained this run now, {config.max_steps} steps"
    )
    assert len(loaded) == 1 and loaded[0].startswith("Loaded this run from the cache")


def test_the_training_log_fits_the_column_names_no_machine_folder_and_comes_back(
    cache, tmp_path, capsys
):
    config = micro_config(tmp_path)
    book.train_once(config)
    trained = capsys.readouterr().out
    book.train_once(config)
    loaded = capsys.readouterr().out
    folder = book.run_folder(config, load_corpus())
    log = trained.split("\n", 1)[1]
    assert (
        "validation loss" in log
        and str(cache) not in trained
        and f"book-runs/{folder.name}" in log
    )
    assert all(len(line) <= book.COLUMNS for line in trained.splitlines())
    assert loaded.split("\n", 1)[1] == "Its training log:\n" + log
