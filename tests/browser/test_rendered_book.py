"""Open every page of the built book in headless Chromium and check what a reader would
see: no JavaScript error, rendered math, loaded images, working internal links, nothing
loaded from another host (the book must work offline), Colab buttons on the chapters,
and MoE sliders that change the figure. Then whether the page reads well at the width of
a laptop screen (1280 pixels): no code, output or equation wider than the text column,
figures sharp on a 2x display and not squeezed, no Python warning or temporary path in
an output, and every citation a link to its entry in the references.
"""

import functools
import html.parser
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
MOE_CHAPTER = "notebooks/06_moe_routing"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def toc_pages() -> list[str]:
    """Every document in _toc.yml, in reading order (no extension)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                yield entry["file"]
            yield from walk(entry.get("sections"))
            yield from walk(entry.get("chapters"))

    return [toc["root"], *walk(toc.get("parts")), *walk(toc.get("chapters"))]


PAGES = toc_pages() + ["genindex", "search"]


class _Anchors(html.parser.HTMLParser):
    """The ids (and names) of a page's elements; with tag and class_name, of those
    elements only."""

    def __init__(self, tag: str | None = None, class_name: str | None = None):
        super().__init__()
        self.tag, self.class_name = tag, class_name
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.tag and (
            tag != self.tag or self.class_name not in (attrs.get("class") or "").split()
        ):
            return
        for name in ("id", "name"):
            if attrs.get(name):
                self.ids.add(attrs[name])


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return frozenset(parser.ids)


def open_page(browser, base_url, page):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(base_url + page + ".html")
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    # MathJax typesets after the load event; wait until it has finished (or failed).
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done('absent'); return; }
        MathJax.startup.promise.then(() => done('ok'), (e) => done('error: ' + e));""")
    assert not status.startswith("error"), f"{page}: MathJax failed: {status}"
    # Wait for every image to finish loading, successfully or not.
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all([...document.images].map((img) => img.complete ? null :
            new Promise((resolve) => { img.onload = img.onerror = resolve; }))).then(() => done());""")


def is_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and parts.hostname not in LOCAL_HOSTS


def severe_console_messages(browser):
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
    ]


def test_every_page_in_the_toc_was_built(site):
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert not missing, f"pages in _toc.yml that the build did not produce: {missing}"


def test_the_landing_page_has_the_demo_banner_if_and_only_if_a_chapter_ran_on_the_demo(
    site,
):
    """book/_ext/demo_banner.py: a demo build says so on its landing and setup pages;
    a build on WikiText says nothing there."""
    demo_chapters = [
        page.stem
        for page in (site / "notebooks").glob("*.html")
        if "corpus-demo" in page.read_text(encoding="utf-8")
    ]
    for page in ("book/intro", "book/setup"):
        banner = "demo-build-banner" in (site / f"{page}.html").read_text("utf-8")
        assert banner == bool(demo_chapters), (
            f"{page}: banner {banner}, chapters on the demo corpus: {demo_chapters}"
        )


@pytest.mark.parametrize("page", PAGES)
def test_page(browser, base_url, site, screenshots, page):
    open_page(browser, base_url, page)
    browser.save_screenshot(str(screenshots / f"{page.replace('/', '__')}.png"))

    errors = severe_console_messages(browser)
    assert not errors, f"{page}: JavaScript errors in the console: {errors}"

    # Nothing may come from another host: the book has to work offline.
    loaded = browser.execute_script("""
        return [...document.querySelectorAll('script[src]')].map((e) => e.src)
            .concat([...document.querySelectorAll('link[href]')]
                .filter((e) => /stylesheet|preload|icon|manifest/.test(e.rel)).map((e) => e.href))
            .concat(performance.getEntriesByType('resource').map((e) => e.name));""")
    remote = sorted({url for url in loaded if is_remote(url)})
    assert not remote, f"{page}: loads from outside the site: {remote}"

    # Math: every math node typeset by MathJax, no TeX error, no raw delimiters left in
    # the text.
    math = browser.execute_script("""
        const nodes = [...document.querySelectorAll('.math')];
        const clone = document.body.cloneNode(true);
        clone.querySelectorAll('pre, code, script, style, mjx-container').forEach((e) => e.remove());
        return {nodes: nodes.length,
                untypeset: nodes.filter((n) => !n.querySelector('mjx-container')).map((n) => n.textContent),
                errors: [...document.querySelectorAll('mjx-merror, [data-mjx-error]')]
                    .map((e) => e.textContent),
                text: clone.textContent};""")
    assert not math["untypeset"], f"{page}: math not typeset: {math['untypeset'][:5]}"
    assert not math["errors"], f"{page}: MathJax errors: {math['errors'][:5]}"
    raw = [
        token
        for token in ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{")
        if token in math["text"]
    ]
    assert not raw, (
        f"{page}: raw LaTeX delimiters {raw} in the page text: math that was not parsed"
    )
    if math["nodes"]:
        assert browser.find_elements(By.CSS_SELECTOR, "mjx-container"), (
            f"{page}: math but no MathJax output"
        )

    broken = browser.execute_script("""
        return [...document.images].filter((img) => img.naturalWidth === 0)
            .map((img) => img.getAttribute('src').slice(0, 120));""")
    assert not broken, f"{page}: images that did not load: {broken}"

    # Internal links must point to a built file, and to an existing anchor in it.
    hrefs = set(
        browser.execute_script(
            "return [...document.querySelectorAll('a[href]')].map((a) => a.href)"
        )
    )
    bad_links = []
    for href in hrefs:
        url = urlsplit(href)
        if url.scheme not in ("http", "https") or is_remote(href):
            continue
        target = site / unquote(url.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            bad_links.append(f"{href} (no such file)")
        elif (
            url.fragment
            and target.suffix == ".html"
            and unquote(url.fragment) not in anchors(target)
        ):
            bad_links.append(f"{href} (no such anchor)")
    assert not bad_links, f"{page}: broken internal links: {sorted(bad_links)}"

    if page.startswith("notebooks/"):
        repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"][
            "url"
        ]
        colab = "https://colab.research.google.com/github/" + urlsplit(
            repository
        ).path.strip("/")
        assert any(
            href.startswith(colab) and href.endswith(f"{page}.ipynb") for href in hrefs
        ), f"{page}: no Colab launch button for {page}.ipynb"


# What a reader should not meet in a cell's output: a Python warning, or a path of the
# build machine's temporary folders (tempfile's names are "tmp" and 8 characters).
WARNING = re.compile(r"\b[A-Z]\w*Warning\b:?|\bWarning:")
TEMP_PATH = re.compile(r"(?<![\w.])/tmp/|/var/folders/|\btmp[a-z0-9_]{8}\b")
# A citation typed by hand instead of a {cite} role that links it to the references:
# "Ainslie et al., 2023", "(Shazeer, 2019)", "(Zhang & Sennrich, 2019)" or "Zhang and
# Sennrich (2019)".
TYPED_CITATION = re.compile(
    r"\b[A-Z][\w'-]+ et al\.,? \(?(?:19|20)\d\d"
    r"|\([A-Z][\w'-]+(?: (?:and|&) [A-Z][\w'-]+)?,? (?:19|20)\d\d[a-z]?[;)]"
    r"|\b[A-Z][\w'-]+ (?:and|&) [A-Z][\w'-]+ \((?:19|20)\d\d\)"
)
# a figure shown narrower than this share of its own width is squeezed: its labels
# shrink
SQUEEZED = 0.95
REFERENCES = "book/references"

LAYOUT_PROBLEMS = r"""
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const column = article.getBoundingClientRect();
const problems = [];
const excerpt = (el) => el.textContent.trim().replace(/\s+/g, ' ').slice(0, 70);
// Code cells, outputs and code blocks: no sideways scrolling.
for (const pre of article.querySelectorAll('pre')) {
  if (pre.offsetParent === null) continue;  // hidden (a closed dropdown)
  if (pre.scrollWidth > pre.clientWidth + 1)
    problems.push(`code or output ${pre.scrollWidth} px wide in a ${pre.clientWidth} px box: ${excerpt(pre)}`);
}
// Anything in the text column that sticks out of it. A wide table scrolling in its own box is fine: then the
// box is what must fit.
const scrollBox = (el) => {
  for (let e = el.parentElement; e && e !== article; e = e.parentElement)
    if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) return e;
  return el;
};
for (const el of article.querySelectorAll('.cell_output > *, .cell_input, table, img, .widget-box')) {
  const box = scrollBox(el).getBoundingClientRect();
  if (box.width && box.right > column.right + 1)
    problems.push(`${el.tagName.toLowerCase()}.${el.className} sticks out of the column by `
                  + `${Math.round(box.right - column.right)} px: ${excerpt(el)}`);
}
// Display equations: as wide as the column at most (break long ones over lines).
const items = window.MathJax && MathJax.startup && MathJax.startup.document
  ? MathJax.startup.document.getMathItemsWithin(article) : [];
for (const item of items) {
  if (!item.display || !item.typesetRoot) continue;
  const math = item.typesetRoot.querySelector('mjx-math') || item.typesetRoot;
  const width = math.getBoundingClientRect().width, room = item.typesetRoot.parentElement.clientWidth;
  if (width > room + 1)
    problems.push(`equation ${Math.round(width)} px wide in a ${room} px column: `
                  + item.math.trim().replace(/\s+/g, ' ').slice(0, 80));
}
// Figures: at least two image pixels per CSS pixel (sharp on a 2x display), unless SVG; not squeezed.
for (const img of article.querySelectorAll('img')) {
  const shown = img.getBoundingClientRect().width;
  if (!shown || !img.naturalWidth) continue;  // hidden (another slider position), or not loaded
  const src = img.currentSrc || img.src;
  if (/\.svg(\?|#|$)|^data:image\/svg/.test(src)) continue;
  const name = (img.getAttribute('alt') || src.split('/').pop()).slice(0, 60);
  if (img.naturalWidth < 2 * shown - 1)
    problems.push(`image ${name}: ${img.naturalWidth} pixels shown ${Math.round(shown)} px wide,`
                  + ` less than 2 pixels per CSS pixel`);
  const meant = parseFloat(img.getAttribute('width')) || img.naturalWidth / 2;
  if (shown < arguments[0] * meant)
    problems.push(`image ${name}: made for ${Math.round(meant)} px, squeezed to ${Math.round(shown)} px`);
}
return problems;"""


@pytest.mark.parametrize("page", PAGES)
def test_page_reads_well(browser, base_url, page):
    """Nothing wider than the text column, sharp figures, no warnings or temporary paths
    in outputs."""
    open_page(browser, base_url, page)
    problems = browser.execute_script(LAYOUT_PROBLEMS, SQUEEZED)
    outputs = browser.execute_script(
        "return [...document.querySelectorAll('.cell_output')].map((e) => "
        "e.textContent)"
    )
    for text in outputs:
        for pattern, what in (
            (WARNING, "a Python warning"),
            (TEMP_PATH, "a temporary-folder path"),
        ):
            found = pattern.search(text)
            if found:
                start = max(0, found.start() - 40)
                problems.append(
                    f"{what} in an output: ...{text[start : found.end() + 40]!r}"
                )
    assert not problems, f"{page}: " + "\n  ".join(
        [f"{len(problems)} problem(s):", *problems]
    )


@functools.lru_cache(maxsize=None)
def reference_entries(site: Path) -> frozenset:
    """The anchors of the entries of the references page."""
    parser = _Anchors(tag="div", class_name="citation")
    parser.feed((site / f"{REFERENCES}.html").read_text(encoding="utf-8"))
    return frozenset(parser.ids)


@pytest.mark.parametrize("page", PAGES)
def test_citations_link_to_the_references(browser, base_url, site, page):
    open_page(browser, base_url, page)
    found = browser.execute_script("""
        const article = document.querySelector('article.bd-article') || document.querySelector('main');
        const citations = [...article.querySelectorAll('.bibtex-citation')];
        const prose = article.cloneNode(true);
        prose.querySelectorAll('.bibtex-citation, pre, code, .cell_output, .citation, mjx-container')
            .forEach((e) => e.remove());
        return {citations: citations.map((c) => ({text: c.textContent,
                                                  hrefs: [...c.querySelectorAll('a')].map((a) => a.href)})),
                prose: prose.textContent};""")
    entries = reference_entries(site)
    problems = []
    for citation in found["citations"]:
        if not citation["hrefs"]:
            problems.append(
                f"citation {citation['text']!r} links to nothing: is its key in "
                "references.bib?"
            )
        for href in citation["hrefs"]:
            url = urlsplit(href)
            if (
                not unquote(url.path).endswith(f"/{REFERENCES}.html")
                or unquote(url.fragment) not in entries
            ):
                problems.append(
                    f"citation {citation['text']!r} links to {href}, not to an entry "
                    "of the references"
                )
    typed = sorted(set(TYPED_CITATION.findall(found["prose"])))
    if typed:
        problems.append(
            f"citations typed by hand, not linked to the references (use {{cite}}): "
            f"{typed}"
        )
    assert not problems, f"{page}: " + "\n  ".join(problems)


def visible_widget_image(container):
    """PNG screenshot and src of the one widget image shown inside `container`."""
    shown = [
        img
        for img in container.find_elements(By.CSS_SELECTOR, "img")
        if img.is_displayed()
    ]
    assert len(shown) == 1, (
        f"expected one visible figure in the widget, found {len(shown)}"
    )
    return shown[0].screenshot_as_png, shown[0].get_attribute("src")


def test_moe_sliders_change_the_figure(browser, base_url, screenshots):
    open_page(browser, base_url, MOE_CHAPTER)
    handles = WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle"),
        message=f"{MOE_CHAPTER}: the slider widgets did not render (is the widget "
        "state embedded?)",
    )
    assert len(handles) >= 2, (
        f"{MOE_CHAPTER}: expected the experts and top-k sliders, found {len(handles)}"
    )

    for number, handle in enumerate(handles):
        # The explorer is the nearest widget box that holds both the slider and figures.
        container = handle.find_element(
            By.XPATH, "ancestor::div[contains(@class, 'widget-box')][.//img][1]"
        )
        browser.execute_script(
            "arguments[0].scrollIntoView({block: 'center'})", container
        )
        before, src_before = visible_widget_image(container)
        container.screenshot(str(screenshots / f"moe_slider{number}_before.png"))
        position = handle.get_attribute("aria-valuenow")
        at_max = float(position) >= float(handle.get_attribute("aria-valuemax"))
        handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
        WebDriverWait(browser, 10).until(
            lambda d: handle.get_attribute("aria-valuenow") != position,
            message=f"slider {number} did not move",
        )
        WebDriverWait(browser, 10).until(
            lambda d: visible_widget_image(container)[1] != src_before,
            message=f"slider {number} moved but the figure stayed the same",
        )
        after, _ = visible_widget_image(container)
        container.screenshot(str(screenshots / f"moe_slider{number}_after.png"))
        assert after != before, (
            f"slider {number}: a different image is shown but it looks the same"
        )

    errors = severe_console_messages(browser)
    assert not errors, (
        f"{MOE_CHAPTER}: JavaScript errors while moving the sliders: {errors}"
    )
