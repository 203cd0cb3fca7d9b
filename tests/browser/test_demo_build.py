r"""The book as a fresh machine builds it, on the offline demo corpus (no hub, no
$QWEN_MINIMAL_DATA or $QWEN_MINIMAL_TOKENIZER): every chapter that loads the corpus says
so once, near its top, in an admonition (qwen_minimal.book.corpus_note), and none of its
outputs claims WikiText or GPT-2's tokenizer for its data.

It reads the built HTML of the book in $BOOK_HTML (conftest.py), which must be a demo
build, e.g.

    env -u QWEN_MINIMAL_DATA -u QWEN_MINIMAL_TOKENIZER HF_HUB_OFFLINE=1 \
        jupyter-book build . --path-output /tmp/book-demo
    BOOK_HTML=/tmp/book-demo/_build/html pytest tests/browser/test_demo_build.py

Pointed at a build on other data it fails, saying what that build was made from.
"""

import html.parser
import json
import re
from pathlib import Path

import pytest

from qwen_minimal.book import DEMO_CLASS, NOTE_CLASS

ROOT = Path(__file__).resolve().parents[2]

DEMO_TITLE = "Built on the offline demo corpus"
# Names of the data that the demo corpus stands in for. An output may name them only to
# say that they were not loaded ("not WikiText", "without WikiText-103", "none of
# WikiText's markers", "instead of GPT-2's") or to say how to get them ("a folder with
# GPT-2's tokenizer", "a hub WikiText config").
REAL_DATA = re.compile(
    r"(?<!not )(?<!without )(?<!instead of )(?<!none of )(?<!not in )(?<!folder with "
    r")(?<!hub )"
    r"\b(WikiText(?:-2|-103)?|GPT-2|gpt2)\b"
)
VOID_ELEMENTS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}
# A chapter that loads the corpus, directly or through a training run (train(...), not
# model.train()).
USES_CORPUS = re.compile(r"\b(load_corpus|train_once)\(|(?<![.\w])train\(")


def chapters_using_the_corpus() -> list[str]:
    pages = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if any(
            cell["cell_type"] == "code" and USES_CORPUS.search("".join(cell["source"]))
            for cell in cells
        ):
            pages.append(f"notebooks/{path.stem}")
    return pages


CHAPTERS = chapters_using_the_corpus()


class Page(html.parser.HTMLParser):
    """What this test reads of a built page: the corpus notes (their classes, title,
    text and how many section headings of the article come before them), the text of the
    cell outputs and of the values pasted into the prose."""

    def __init__(self):
        super().__init__()
        self.notes, self.outputs, self.h2_seen, self.in_article = [], [], 0, False
        self.stack = []  # (tag, what it collects: "note", "output" or None)

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        self.in_article |= tag == "article" and "bd-article" in classes
        if tag == "h2" and self.in_article:  # not the sidebar's "Contents"
            self.h2_seen += 1
        role = None
        if tag == "div" and NOTE_CLASS in classes:
            self.notes.append(
                {"classes": classes, "text": "", "title": "", "h2_before": self.h2_seen}
            )
            role = "note"
        elif (
            tag == "div"
            and "cell_output" in classes
            or tag == "span"
            and "pasted-text" in classes
        ):
            self.outputs.append("")
            role = "output"
        elif (
            tag == "p" and "admonition-title" in classes and self.collecting() == "note"
        ):
            role = "title"
        if tag not in VOID_ELEMENTS:
            self.stack.append((tag, role))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def collecting(self):
        return next(
            (role for _, role in reversed(self.stack) if role in ("note", "output")),
            None,
        )

    def handle_data(self, data):
        if any(role == "title" for _, role in self.stack):
            self.notes[-1]["title"] += data
        where = self.collecting()
        if where == "note":
            self.notes[-1]["text"] += data
        elif where == "output":
            self.outputs[-1] += data


def read_page(site, page) -> Page:
    parsed = Page()
    parsed.feed((site / f"{page}.html").read_text(encoding="utf-8"))
    return parsed


@pytest.fixture(scope="module")
def demo_site(site):
    """The built site, after checking that it is a demo build."""
    pages = {
        page: read_page(site, page)
        for page in CHAPTERS
        if (site / f"{page}.html").is_file()
    }
    notes = [note for page in pages.values() for note in page.notes]
    if notes and not any(DEMO_CLASS in note["classes"] for note in notes):
        said = " | ".join(sorted({" ".join(note["text"].split()) for note in notes}))
        pytest.fail(
            f"{site} is not a demo build: its pages were built on other data "
            f"({said}). Build the book "
            "without $QWEN_MINIMAL_DATA and $QWEN_MINIMAL_TOKENIZER, with "
            "HF_HUB_OFFLINE=1, into a folder "
            f"of its own, and point BOOK_HTML at its _build/html"
        )
    return pages


def test_some_chapters_use_the_corpus():
    assert {"notebooks/01_tokens_and_data", "notebooks/09_sampling"} <= set(CHAPTERS), (
        CHAPTERS
    )


def built(demo_site, page) -> Page:
    if page not in demo_site:
        pytest.fail(
            f"{page} was not built: the book is older than the chapter, or its build "
            "failed"
        )
    return demo_site[page]


@pytest.mark.parametrize("page", CHAPTERS)
def test_the_demo_corpus_is_announced_once_at_the_top(demo_site, page):
    notes = built(demo_site, page).notes
    assert len(notes) == 1, (
        f"{page}: {len(notes)} corpus notes, expected one "
        "(qwen_minimal.book.corpus_note)"
    )
    note = notes[0]
    assert {"admonition", DEMO_CLASS} <= set(note["classes"]), (
        f"{page}: the corpus note is not a demo admonition (classes "
        f"{note['classes']}): was the MyST parsed?"
    )
    assert note["title"].strip() == DEMO_TITLE, (
        f"{page}: the note's title is {note['title']!r}"
    )
    assert note["h2_before"] <= 1, (
        f"{page}: the note comes after {note['h2_before']} sections, not at the top"
    )
    # MyST prints apostrophes as ’
    text = " ".join(note["text"].split()).replace("\u2019", "'")
    assert "Python's own help text" in text and "QWEN_MINIMAL_DATA" in text, text


@pytest.mark.parametrize("page", CHAPTERS)
def test_no_output_claims_wikitext_or_gpt2(demo_site, page):
    claims = [
        (
            match.group(0),
            " ".join(text[max(0, match.start() - 60) : match.end() + 60].split()),
        )
        for text in built(demo_site, page).outputs
        for match in REAL_DATA.finditer(text)
    ]
    assert not claims, (
        f"{page}: outputs of the demo build name data it did not load: {claims}"
    )


@pytest.mark.parametrize("page", CHAPTERS)
def test_no_python_warning_announces_the_demo(site, demo_site, page):
    built(demo_site, page)
    text = (site / f"{page}.html").read_text(encoding="utf-8")
    assert "DemoDataWarning" not in text and "OFFLINE DEMO TOKENIZER" not in text, (
        f"{page}: the demo data is announced by a Python warning, not only by the note"
    )


@pytest.mark.parametrize("page", ["book/intro", "book/setup"])
def test_the_landing_and_setup_pages_say_the_build_ran_on_the_demo(
    demo_site, site, page
):
    """book/_ext/demo_banner.py: the pages that execute nothing carry the chapters'
    note as a banner under their title."""
    source = (site / f"{page}.html").read_text(encoding="utf-8")
    banner = re.search(
        r'<div class="[^"]*demo-build-banner[^"]*">(.*?)</div>', source, re.S
    )
    assert banner, f"{page}: no demo-corpus banner"
    text = " ".join(re.sub(r"<[^>]+>", " ", banner.group(1)).split()).replace(
        "\u2019", "'"
    )
    assert "offline demo corpus" in text and "Python's own help text" in text, text
    article = source.index('<article class="bd-article"')  # the page's own text
    title = source.index("<h1", article)
    banner_at = source.index("demo-build-banner")
    first_section = source.find("<h2", article)  # -1: the page has no sections
    assert title < banner_at and (first_section == -1 or banner_at < first_section), (
        f"{page}: the banner is not under the page's title"
    )
