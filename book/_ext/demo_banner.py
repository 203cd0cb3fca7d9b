"""A banner on the landing and setup pages of a book built on the offline demo corpus.

The chapters say which data they ran on: qwen_minimal.book.corpus_note shows, on the demo
corpus, an admonition with the class `corpus-demo`. The landing and setup pages execute
nothing, so on their own they cannot know. This extension (loaded by _config.yml) notes
which chapters carry that admonition while Sphinx reads them, and once every page is read
puts the first chapter's note, retitled, at the top of the landing and setup pages.
"""

from docutils import nodes

DEMO_CLASS = "corpus-demo"  # qwen_minimal.book.DEMO_CLASS
BANNER_CLASS = "demo-build-banner"  # tests/browser/test_demo_build.py looks for it
PAGES = ("book/intro", "book/setup")
TITLE = "This build of the book ran on the offline demo corpus"


def demo_notes(doctree) -> list:
    return [
        node
        for node in doctree.findall(nodes.Admonition)
        if DEMO_CLASS in node.get("classes", [])
    ]


def record(app, doctree) -> None:
    """While a page is read: keep its demo admonition, if it has one."""
    notes = app.env.__dict__.setdefault("qwen_demo_notes", {})
    found = demo_notes(doctree)
    if found:  # its paragraphs as text: the environment is pickled, nodes are not
        notes[app.env.docname] = [p.astext() for p in found[0].findall(nodes.paragraph)]


def forget(app, env, docname) -> None:
    env.__dict__.setdefault("qwen_demo_notes", {}).pop(docname, None)


def merge(app, env, docnames, other) -> None:
    env.__dict__.setdefault("qwen_demo_notes", {}).update(
        {name: note for name, note in other.qwen_demo_notes.items() if name in docnames}
    )


def add_banner(app, doctree, docname) -> None:
    """Once every page is read: the landing and setup pages of a demo build get the
    first demo chapter's admonition as a banner under their title."""
    notes = getattr(app.env, "qwen_demo_notes", {})
    if docname not in PAGES or not notes:
        return
    paragraphs = notes[sorted(notes)[0]]
    banner = nodes.admonition(classes=["warning", BANNER_CLASS])
    banner += nodes.title(text=TITLE)
    for text in paragraphs:  # the note speaks of its chapter; here, of the book
        banner += nodes.paragraph(text=text.replace("This page was", "This book was"))
    section = next(doctree.findall(nodes.section), None)
    if section is None:
        return
    heading = next(i for i, child in enumerate(section) if isinstance(child, nodes.title))
    section.insert(heading + 1, banner)


def setup(app):
    app.connect("doctree-read", record)
    app.connect("env-purge-doc", forget)
    app.connect("env-merge-info", merge)
    app.connect("doctree-resolved", add_banner)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
