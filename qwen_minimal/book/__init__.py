"""What the book's chapters share (pip install "qwen-minimal[book]"); widgets.py holds
its interactive figures.

setup()          the first code cell of a chapter calls it: figures sharp on
                 high-resolution screens and sized for the book's text column; the
                 demo-data warning silenced (corpus_note says it)
corpus_note(c)   on the offline demo corpus, an admonition saying what was loaded
                 instead of WikiText and GPT-2's tokenizer, and how to get them;
                 otherwise one line naming the data
text_label(c), tokenizer_label(c)
                 what to call the loaded text and tokenizer in a sentence
glue({name: v})  values the prose quotes (MyST-NB's glue); does nothing where MyST-NB is
                 absent (Colab)
wrap(text)       text with its long lines broken to fit the column, for printing
source(obj)      the package's code of a function or class, as it is (the package is
                 written at the column's width)
train_once(cfg)  a training run kept in the cache: trained the first time, loaded on
                 every later call
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import inspect
import io
import json
import re
import textwrap
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from ..data import Corpus, DemoDataWarning, load_corpus
from ..data.text import HUB_DATASET
from ..data.token_cache import cache_folder
from ..errors import MissingInputError
from ..files import short_hash
from ..training import TrainConfig, TrainResult, checkpoint, train
from ..training.monitoring import read_metrics

# The book's text column is about 740 CSS pixels wide: at 100 pixels per inch a 7-inch
# figure fills it without being scaled down, so its 10-point labels stay 10-point
# labels.
FIGURE_STYLE = {
    "figure.figsize": (7.0, 3.8),
    "figure.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
}
NOTE_CLASS = "corpus-note"  # tests/browser finds the notes by these classes
DEMO_CLASS = "corpus-demo"
BOOK_RUNS = "book-runs"
# beside a run's checkpoint: what train printed, as train_once showed it
TRAIN_LOG = "train.log"
# a training log line's throughput, "| 1,234 tok/s": over a few steps on a shared CPU it
# swings with the machine's load, so the log a page shows leaves it out (a page that
# quotes a throughput takes the run's median from its history)
LINE_THROUGHPUT = re.compile(r"\s*\|\s+[\d,.]+\s+tok/s")
# characters of code or printed output that fit the text column (book/_static/book.css)
COLUMNS = 88


def setup() -> None:
    """Figures as PNGs of twice their displayed size (sharp on 2x screens), in
    FIGURE_STYLE; no DemoDataWarning."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    warnings.filterwarnings("ignore", category=DemoDataWarning)
    plt.rcParams.update(FIGURE_STYLE)
    set_matplotlib_formats("retina")


# --------------------------------------------------------------------- what the data is


def text_label(corpus: Corpus) -> str:
    """The text, as a sentence names it: "WikiText-103", "the local text wikitext-2" or
    "Python's help text"."""
    if corpus.demo_text:
        return "Python's help text"
    if corpus.text_name.startswith(HUB_DATASET):
        config = corpus.text_name.split()[-1]  # e.g. wikitext-103-raw-v1
        size = config.split("-")[1]
        return f"WikiText-{size}" + (" (raw)" if "raw" in config else "")
    return f"the local text {Path(corpus.text_name).name}"


def tokenizer_label(corpus: Corpus) -> str:
    """The tokenizer, as a sentence names it: "the demo BPE" or the name of its hub
    entry or folder ("gpt2")."""
    if corpus.demo_tokenizer:
        return "the demo BPE"
    return Path(corpus.tokenizer.name_or_path).name


def corpus_note(corpus: Corpus) -> None:
    """Show which data the page runs on. On the offline demo corpus: an admonition that
    says plainly what stands in for WikiText and GPT-2's tokenizer, and how to get them.
    Otherwise: one line naming the text and tokenizer. The book renders the MyST
    version; Jupyter and Colab show the HTML one."""
    sizes = (
        f"{len(corpus.train):,} training and {len(corpus.validation):,} "
        "validation tokens"
    )
    if not (corpus.demo_text or corpus.demo_tokenizer):
        line = (
            f"Data for this page: {text_label(corpus)}, tokenized with "
            f"`{tokenizer_label(corpus)}` "
            f"({corpus.vocab_size:,} tokens); {sizes}."
        )
        _show_admonition("Data", line, "note")
        return
    missing = [
        name
        for name, demo in (
            ("WikiText-103", corpus.demo_text),
            ("GPT-2's tokenizer", corpus.demo_tokenizer),
        )
        if demo
    ]
    text = (
        "Python's own help text (`pydoc_data.topics`)"
        if corpus.demo_text
        else text_label(corpus)
    )
    tokenizer = (
        f"a byte-level BPE of {corpus.vocab_size:,} tokens trained on that help text"
        if corpus.demo_tokenizer
        else f"`{tokenizer_label(corpus)}` ({corpus.vocab_size:,} tokens)"
    )
    body = (
        f"This page was built without {' and '.join(missing)}: the Hugging Face hub "
        "could not be reached "
        f"and no local copy was given. It runs on {text}, {sizes}, cut into tokens "
        f"by {tokenizer}. "
        "Wherever the text speaks of the corpus or the tokenizer, it means these, "
        "and the figures and "
        "numbers are theirs. For the real ones, run the notebook where the hub is "
        "reachable (Colab, for one), "
        "or set `$QWEN_MINIMAL_DATA` to a folder of WikiText files "
        "(`wiki.train.tokens`, `wiki.valid.tokens`) "
        "and `$QWEN_MINIMAL_TOKENIZER` to a GPT-2 tokenizer folder (`vocab.json`, "
        "`merges.txt`)."
    )
    _show_admonition("Built on the offline demo corpus", body, f"warning {DEMO_CLASS}")


def _show_admonition(title: str, body: str, classes: str) -> None:
    from IPython.display import display

    markdown = (
        f":::{{admonition}} {title}\n:class: {classes} {NOTE_CLASS}\n{body}\n:::\n"
    )
    body_html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(body, quote=False))
    page = (
        f'<div class="admonition {classes} {NOTE_CLASS}"><p '
        f'class="admonition-title">{html.escape(title)}'
        f"</p><p>{body_html}</p></div>"
    )
    display(
        {
            "text/markdown": markdown,
            "text/html": page,
            "text/plain": f"{title}: {body.replace('`', '')}",
        },
        raw=True,
    )


def glue(values: dict) -> None:
    """Make each value quotable in the page's prose as {glue:text}`name` (MyST-NB). Call
    it once, after the cell's prints: each value is an output of its own, and between
    two prints it would split their box. Where MyST-NB is not installed (Colab, plain
    Jupyter) nothing happens: the cell's printed output says the same."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    for name, value in values.items():
        myst_glue(name, value, display=False)


def wrap(text: str, width: int = COLUMNS) -> str:
    """`text` with every line longer than `width` broken at spaces; the continuation
    lines keep the line's indentation. Shorter lines, blank ones and line breaks are
    left as they are."""

    def fold(line: str) -> str:
        if len(line) <= width:
            return line
        indent = line[: len(line) - len(line.lstrip())]
        return "\n".join(
            textwrap.wrap(
                line.strip(),
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
            )
        )

    return "\n".join(fold(line) for line in text.split("\n"))


# --------------------------------------------------------- the package's code on a page


def source(obj):
    """The source code of `obj` (a function, class or method of the package) as a page
    shows it: dedented, with syntax colours. The package is written at the column's
    width (ruff, line-length 88), so the code is shown exactly as it is."""
    from IPython.display import Code

    return Code(textwrap.dedent(inspect.getsource(obj)), language="python")


def run_folder(config: TrainConfig, corpus: Corpus) -> Path:
    """Where train_once keeps the run of `config` on `corpus`: a folder named by a hash
    of every setting that changes the result (all but out_dir and progress) and of the
    token files the run reads (which name the text and the tokenizer)."""
    settings = {
        k: v for k, v in config.to_dict().items() if k not in ("out_dir", "progress")
    }
    data = [Path(ids.filename).name for ids in (corpus.train, corpus.validation)]
    return (
        cache_folder()
        / BOOK_RUNS
        / short_hash(json.dumps([settings, data], sort_keys=True))
    )


def train_once(config: TrainConfig, quiet: bool = False) -> TrainResult:
    """train(config) into a folder of the cache (run_folder), or, if a finished run of
    the same settings on the same data is there already, that run loaded without
    training: chapter 8 trains a run and chapter 9 reuses it, and a rebuilt book trains
    nothing. An unfinished run there (stopped by Ctrl-C) is resumed. config.out_dir is
    ignored. A loaded run's model is in eval mode, its tokenizer the copy saved with the
    checkpoint. The training log is printed when training ends, its lines fitted to the
    column, without each line's tokens/s (LINE_THROUGHPUT) and with the machine's cache
    folder shown as book-runs/<name>; it is kept with the run (TRAIN_LOG) and printed
    again when the run is loaded. quiet: one line instead of
    the training log, for a page that reuses a run another page shows training."""
    folder = run_folder(config, load_corpus(config.data, config.tokenizer))
    where = f"{BOOK_RUNS}/{folder.name}"
    try:
        step = checkpoint.read_config(folder)["step"]
    except MissingInputError:
        step = None
    if step != config.max_steps:
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            result = train(
                dataclasses.replace(config, out_dir=str(folder)),
                resume=step is not None,
            )
        text = log.getvalue().replace(str(folder), where).rstrip("\n")
        text = wrap(LINE_THROUGHPUT.sub("", text))
        (folder / TRAIN_LOG).write_text(text + "\n")
        print(
            f"Trained this run now, {result.step} steps, and kept it in the cache "
            f"({where})."
        )
        if not quiet:
            print(text)
        return result
    print(f"Loaded this run from the cache ({where}): {step} steps, no training.")
    if not quiet and (folder / TRAIN_LOG).is_file():
        kept = (folder / TRAIN_LOG).read_text().rstrip("\n")
        print("Its training log:\n" + LINE_THROUGHPUT.sub("", kept))
    return TrainResult(
        model=checkpoint.load_model(folder),
        config=TrainConfig.from_run(folder),
        history=read_metrics(folder / "metrics.jsonl"),
        out_dir=folder,
        step=step,
        interrupted=False,
        tokenizer=checkpoint.saved_tokenizer(folder),
    )
