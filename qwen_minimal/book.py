"""What the book's chapters share (pip install "qwen-minimal[book]"); widgets.py holds its interactive figures.

  setup()               the first code cell of a chapter calls it: figures sharp on high-resolution screens and
                        sized for the book's text column; the demo-data warning silenced (corpus_note says it)
  corpus_note(corpus)   on the offline demo corpus, an admonition saying what was loaded instead of WikiText and
                        GPT-2's tokenizer, and how to get them; otherwise one line naming the data
  text_label(corpus), tokenizer_label(corpus)   what to call the loaded text and tokenizer in a sentence
  glue({name: value})   values the prose quotes (MyST-NB's glue); does nothing where MyST-NB is absent (Colab)
  wrap(text)            text with its long lines broken to fit the column, for printing
  source(obj)           the package's code of a function or class, its lines folded to fit the column (fit_code)
  train_once(config)    a training run kept in the cache: trained the first time, loaded on every later call
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
import tokenize
import warnings
from pathlib import Path

import matplotlib.pyplot as plt

from . import checkpoint
from .data import Corpus, DemoDataWarning, load_corpus
from .data.text import HUB_DATASET
from .data.token_cache import cache_folder
from .errors import MissingInputError
from .files import short_hash
from .monitoring import read_metrics
from .train import TrainConfig, TrainResult, train

# The book's text column is about 740 CSS pixels wide: at 100 pixels per inch a 7-inch figure fills it
# without being scaled down, so its 10-point labels stay 10-point labels.
FIGURE_STYLE = {"figure.figsize": (7.0, 3.8), "figure.dpi": 100, "font.size": 10, "axes.titlesize": 11,
                "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9}
NOTE_CLASS = "corpus-note"  # tests/browser finds the notes by these classes
DEMO_CLASS = "corpus-demo"
BOOK_RUNS = "book-runs"
TRAIN_LOG = "train.log"  # beside a run's checkpoint: what train printed, as train_once showed it
COLUMNS = 88  # characters of code or printed output that fit the text column (book/_static/book.css)


def setup() -> None:
    """Figures as PNGs of twice their displayed size (sharp on 2x screens), in FIGURE_STYLE; no DemoDataWarning."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    warnings.filterwarnings("ignore", category=DemoDataWarning)
    plt.rcParams.update(FIGURE_STYLE)
    set_matplotlib_formats("retina")


# ----------------------------------------------------------------------------- what the data is


def text_label(corpus: Corpus) -> str:
    """The text, as a sentence names it: "WikiText-103", "the local text wikitext-2" or "Python's help text"."""
    if corpus.demo_text:
        return "Python's help text"
    if corpus.text_name.startswith(HUB_DATASET):
        config = corpus.text_name.split()[-1]   # e.g. wikitext-103-raw-v1
        size = config.split("-")[1]
        return f"WikiText-{size}" + (" (raw)" if "raw" in config else "")
    return f"the local text {Path(corpus.text_name).name}"


def tokenizer_label(corpus: Corpus) -> str:
    """The tokenizer, as a sentence names it: "the demo BPE" or the name of its hub entry or folder ("gpt2")."""
    if corpus.demo_tokenizer:
        return "the demo BPE"
    return Path(corpus.tokenizer.name_or_path).name


def corpus_note(corpus: Corpus) -> None:
    """Show which data the page runs on. On the offline demo corpus: an admonition that says plainly what stands in
    for WikiText and GPT-2's tokenizer, and how to get them. Otherwise: one line naming the text and tokenizer.
    The book renders the MyST version; Jupyter and Colab show the HTML one."""
    sizes = f"{len(corpus.train):,} training and {len(corpus.validation):,} validation tokens"
    if not (corpus.demo_text or corpus.demo_tokenizer):
        line = (f"Data for this page: {text_label(corpus)}, tokenized with `{tokenizer_label(corpus)}` "
                f"({corpus.vocab_size:,} tokens); {sizes}.")
        _show_admonition("Data", line, "note")
        return
    missing = [name for name, demo in (("WikiText-103", corpus.demo_text),
                                        ("GPT-2's tokenizer", corpus.demo_tokenizer)) if demo]
    text = ("Python's own help text (`pydoc_data.topics`)" if corpus.demo_text else text_label(corpus))
    tokenizer = (f"a byte-level BPE of {corpus.vocab_size:,} tokens trained on that help text" if corpus.demo_tokenizer
                 else f"`{tokenizer_label(corpus)}` ({corpus.vocab_size:,} tokens)")
    body = (f"This page was built without {' and '.join(missing)}: the Hugging Face hub could not be reached "
            f"and no local copy was given. It runs on {text}, {sizes}, cut into tokens by {tokenizer}. "
            f"Wherever the text speaks of the corpus or the tokenizer, it means these, and the figures and "
            f"numbers are theirs. For the real ones, run the notebook where the hub is reachable (Colab, for one), "
            f"or set `$QWEN_MINIMAL_DATA` to a folder of WikiText files (`wiki.train.tokens`, `wiki.valid.tokens`) "
            f"and `$QWEN_MINIMAL_TOKENIZER` to a GPT-2 tokenizer folder (`vocab.json`, `merges.txt`).")
    _show_admonition("Built on the offline demo corpus", body, f"warning {DEMO_CLASS}")


def _show_admonition(title: str, body: str, classes: str) -> None:
    from IPython.display import display

    markdown = f":::{{admonition}} {title}\n:class: {classes} {NOTE_CLASS}\n{body}\n:::\n"
    body_html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(body, quote=False))
    page = (f'<div class="admonition {classes} {NOTE_CLASS}"><p class="admonition-title">{html.escape(title)}'
            f"</p><p>{body_html}</p></div>")
    display({"text/markdown": markdown, "text/html": page, "text/plain": f"{title}: {body.replace('`', '')}"},
            raw=True)


def glue(values: dict) -> None:
    """Make each value quotable in the page's prose as {glue:text}`name` (MyST-NB). Call it once, after the
    cell's prints: each value is an output of its own, and between two prints it would split their box. Where
    MyST-NB is not installed (Colab, plain Jupyter) nothing happens: the cell's printed output says the same."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return
    for name, value in values.items():
        myst_glue(name, value, display=False)


def wrap(text: str, width: int = COLUMNS) -> str:
    """`text` with every line longer than `width` broken at spaces; the continuation lines keep the line's
    indentation. Shorter lines, blank ones and line breaks are left as they are."""
    def fold(line: str) -> str:
        if len(line) <= width:
            return line
        indent = line[:len(line) - len(line.lstrip())]
        return "\n".join(textwrap.wrap(line.strip(), width, initial_indent=indent, subsequent_indent=indent,
                                        break_on_hyphens=False))
    return "\n".join(fold(line) for line in text.split("\n"))


# ----------------------------------------------------------------------------- the package's code on a page


def source(obj):
    """The source code of `obj` (a function, class or method of the package) as a page shows it: dedented, its
    lines fitted to the column by fit_code (the package's are up to 120 characters), with syntax colours."""
    from IPython.display import Code

    return Code(fit_code(textwrap.dedent(inspect.getsource(obj))), language="python")


def fit_code(code: str, width: int = COLUMNS) -> str:
    """Python source with its lines longer than `width` folded as one would write them for a narrow page, without
    changing what the code does. First a trailing comment moves to a line of its own, above its line (after a
    colon, to the top of the block); then comments and docstrings are wrapped again, paragraph by paragraph; then
    code is broken inside brackets, where Python allows it: at the outermost comma (in a comprehension, `for` or
    `if`) that leaves a line that fits, else before `if`, `else`, `and` or `or`, else after an opening bracket.
    A line that none of these can shorten (a long string) stays as it is."""
    lines = code.split("\n")
    for fold in (_move_trailing_comment, _rewrap_text, _break_code):
        while (folded := _fold_first(lines, width, fold)) is not None:
            lines = folded
    return "\n".join(lines)


def _fold_first(lines: list[str], width: int, fold) -> list[str] | None:
    """`lines` with the first line longer than `width` that `fold` can shorten shortened, or None."""
    code = _Tokens(lines)
    for row, line in enumerate(lines, start=1):
        if len(line) > width and (folded := fold(code, row, width)) is not None and folded != lines:
            return folded
    return None


class _Tokens:
    """The tokens of some source lines, with what fit_code needs to know about each: the brackets open around it
    (their positions) and whether it is inside an f-string (Python 3.12 splits those into tokens); and the
    brackets that hold a comprehension."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        self.indent = [line[:len(line) - len(line.lstrip())] for line in lines]
        self.tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline))
        self.brackets, self.in_fstring, self.comprehensions = [], [], set()
        stack, fstrings = [], 0
        for token in self.tokens:
            self.brackets.append(list(stack))
            fstrings += (token.type == _FSTRING_START) - (token.type == _FSTRING_END)
            self.in_fstring.append(fstrings > 0)
            if token.type == tokenize.NAME and token.string == "for" and stack:
                self.comprehensions.add(stack[-1])
            if token.type == tokenize.OP and token.string in "([{":
                stack.append(token.start)
            elif token.type == tokenize.OP and token.string in ")]}":
                stack.pop()

    def on(self, row: int) -> list[int]:
        """The indices of the tokens on line `row` (1-based), a string spanning it included."""
        return [i for i, t in enumerate(self.tokens) if t.start[0] <= row <= t.end[0] and t.type not in _LAYOUT]

    def replaced(self, first: int, last: int, new: list[str]) -> list[str]:
        return self.lines[:first - 1] + new + self.lines[last:]


_LAYOUT = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
_FSTRING_START, _FSTRING_END = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)


def _move_trailing_comment(code: _Tokens, row: int, width: int) -> list[str] | None:
    line, indent = code.lines[row - 1], code.indent
    for i in code.on(row):
        t = code.tokens[i]
        if t.type == tokenize.COMMENT and t.start[1] > len(indent[row - 1]):
            before = line[:t.start[1]].rstrip()
            if before.endswith(":") and row < len(code.lines) and len(indent[row]) > len(indent[row - 1]):
                return code.replaced(row, row, [before, indent[row] + t.string])  # it says what the block does
            return code.replaced(row, row, [indent[row - 1] + t.string, before])
    return None


def _rewrap_text(code: _Tokens, row: int, width: int) -> list[str] | None:
    """A comment line or a line of a docstring: its paragraph wrapped again."""
    line, indent = code.lines[row - 1], code.indent[row - 1]
    for i in code.on(row):
        t = code.tokens[i]
        if t.type == tokenize.COMMENT and t.start[1] == len(indent):
            first, last = _comment_paragraph(code, row)
            text = " ".join(code.lines[r - 1].strip()[1:].strip() for r in range(first, last + 1))
            return code.replaced(first, last, _wrap(text, width, indent + "# ", indent + "# "))
        if t.type == tokenize.STRING and t.string.lstrip("rbuRBU")[:3] in ('"""', "'''") \
                and (t.start[0] < row or t.start[1] == len(indent)) \
                and (t.end[0] > row or t.end[1] == len(line.rstrip())):
            first, last = _docstring_paragraph(code, row, t.start[0], t.end[0])
            text = " ".join(code.lines[r - 1].strip() for r in range(first, last + 1))
            hanging = code.indent[first] if last > first else code.indent[first - 1]
            return code.replaced(first, last, _wrap(text, width, code.indent[first - 1], hanging))
    return None


def _wrap(text: str, width: int, indent: str, hanging: str) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=hanging, break_long_words=False,
                         break_on_hyphens=False)


def _comment_paragraph(code: _Tokens, row: int) -> tuple[int, int]:
    """The first and last rows of the comment lines around `row` with its indentation, up to the end of a
    sentence (a comment moved up from the end of a line starts a paragraph of its own)."""
    def comment(r):
        return 1 <= r <= len(code.lines) and code.lines[r - 1].strip().startswith("#") and \
            code.indent[r - 1] == code.indent[row - 1]

    def ends_sentence(r):
        return code.lines[r - 1].rstrip()[-1] in ".:!?"
    first, last = row, row
    while comment(first - 1) and not ends_sentence(first - 1):
        first -= 1
    while comment(last + 1) and not ends_sentence(last):
        last += 1
    return first, last


def _docstring_paragraph(code: _Tokens, row: int, top: int, bottom: int) -> tuple[int, int]:
    """The first and last rows of the paragraph that holds `row` in a docstring on rows top..bottom. Blank lines
    end paragraphs; a line indented deeper than the paragraph's first continues it (an argument's description),
    and one back at the first one's indentation after such lines starts the next."""
    depth = [len(indent) for indent in code.indent]
    blank = [not line.strip() for line in code.lines]
    first = row
    while first > top and not blank[first - 2]:
        first -= 1
    deeper = False
    for r in range(first, row + 1):
        if depth[r - 1] < depth[first - 1] or depth[r - 1] == depth[first - 1] and deeper:
            first, deeper = r, False
        deeper |= depth[r - 1] > depth[first - 1]
    last = row
    while last < bottom and not blank[last] and \
            (depth[last] > depth[first - 1] or depth[last] == depth[first - 1] and not deeper):
        last += 1
        deeper |= depth[last - 1] > depth[first - 1]
    return first, last


def _break_code(code: _Tokens, row: int, width: int) -> list[str] | None:
    line, indent, tokens = code.lines[row - 1], code.indent[row - 1], code.tokens
    places = [i for i in code.on(row)[:-1] if tokens[i].start[0] == row and tokens[i].start[1] > len(indent)
              and not code.in_fstring[i] and (code.brackets[i] or tokens[i].string in "([{")
              and _fits_before(tokens[i], width)]
    if not places:
        return None

    def preference(i):  # the outermost (after an opening bracket: inside it), then the kind, then the rightmost
        t, brackets = tokens[i], code.brackets[i]
        comprehension = bool(brackets) and brackets[-1] in code.comprehensions
        if t.string in "([{":
            kind = 3
        elif t.string == ",":
            kind = 2 if comprehension else 0
        else:
            kind = 0 if comprehension and t.string in ("for", "if") else 1
        return len(brackets) + (t.string in "([{"), kind, -t.start[1]
    i = min(places, key=preference)
    t = tokens[i]
    cut = t.start[1] if t.type == tokenize.NAME else t.end[1]  # before a keyword, after a comma or bracket
    tail = line[cut:].strip()
    if t.string in "([{":
        tail = indent + "    " + tail  # a hanging indent, one level deeper than the line
    elif code.brackets[i][-1][0] == row:
        tail = " " * (code.brackets[i][-1][1] + 1) + tail  # aligned with what follows the bracket
    else:
        tail = indent + tail  # the line continues a bracket opened above: its indentation
    return code.replaced(row, row, [line[:cut].rstrip(), tail])


def _fits_before(token: tokenize.TokenInfo, width: int) -> bool:
    """Whether a line may be broken at `token`, leaving a first part that fits."""
    if token.type == tokenize.OP and token.string in ",([{":
        return token.end[1] <= width
    return token.type == tokenize.NAME and token.string in ("for", "if", "else", "and", "or") and \
        token.start[1] <= width


# ----------------------------------------------------------------------------- training once


def run_folder(config: TrainConfig, corpus: Corpus) -> Path:
    """Where train_once keeps the run of `config` on `corpus`: a folder named by a hash of every setting that
    changes the result (all but out_dir and progress) and of the token files the run reads (which name the text
    and the tokenizer)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("out_dir", "progress")}
    data = [Path(ids.filename).name for ids in (corpus.train, corpus.validation)]
    return cache_folder() / BOOK_RUNS / short_hash(json.dumps([settings, data], sort_keys=True))


def train_once(config: TrainConfig, quiet: bool = False) -> TrainResult:
    """train(config) into a folder of the cache (run_folder), or, if a finished run of the same settings on the
    same data is there already, that run loaded without training: chapter 8 trains a run and chapter 9 reuses it,
    and a rebuilt book trains nothing. An unfinished run there (stopped by Ctrl-C) is resumed. config.out_dir is
    ignored. A loaded run's model is in eval mode, its tokenizer the copy saved with the checkpoint.
    The training log is printed when training ends, its lines fitted to the column and the machine's cache folder
    shown as book-runs/<name>; it is kept with the run (TRAIN_LOG) and printed again when the run is loaded.
    quiet: one line instead of the training log, for a page that reuses a run another page shows training."""
    folder = run_folder(config, load_corpus(config.data, config.tokenizer))
    where = f"{BOOK_RUNS}/{folder.name}"
    try:
        step = checkpoint.read_config(folder)["step"]
    except MissingInputError:
        step = None
    if step != config.max_steps:
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            result = train(dataclasses.replace(config, out_dir=str(folder)), resume=step is not None)
        text = wrap(log.getvalue().replace(str(folder), where).rstrip("\n"))
        (folder / TRAIN_LOG).write_text(text + "\n")
        print(f"Trained this run now, {result.step} steps, and kept it in the cache ({where}).")
        if not quiet:
            print(text)
        return result
    print(f"Loaded this run from the cache ({where}): {step} steps, no training.")
    if not quiet and (folder / TRAIN_LOG).is_file():
        print("Its training log:\n" + (folder / TRAIN_LOG).read_text().rstrip("\n"))
    return TrainResult(model=checkpoint.load_model(folder), config=TrainConfig.from_run(folder),
                       history=read_metrics(folder / "metrics.jsonl"), out_dir=folder, step=step,
                       interrupted=False, tokenizer=checkpoint.saved_tokenizer(folder))
