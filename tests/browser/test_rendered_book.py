"""Open every page of the built book in headless Chromium and check what a reader would see:
no JavaScript error, rendered math, loaded images, working internal links, nothing loaded from another
host (the book must work offline), Colab buttons on the chapters, and MoE sliders that change the figure.
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
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return frozenset(parser.ids)


def open_page(browser, base_url, page):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(base_url + page + ".html")
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
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
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_every_page_in_the_toc_was_built(site):
    missing = [page for page in PAGES if not (site / f"{page}.html").is_file()]
    assert not missing, f"pages in _toc.yml that the build did not produce: {missing}"


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

    # Math: every math node typeset by MathJax, no TeX error, no raw delimiters left in the text.
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
    raw = [token for token in ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{") if token in math["text"]]
    assert not raw, f"{page}: raw LaTeX delimiters {raw} in the page text: math that was not parsed"
    if math["nodes"]:
        assert browser.find_elements(By.CSS_SELECTOR, "mjx-container"), f"{page}: math but no MathJax output"

    broken = browser.execute_script("""
        return [...document.images].filter((img) => img.naturalWidth === 0)
            .map((img) => img.getAttribute('src').slice(0, 120));""")
    assert not broken, f"{page}: images that did not load: {broken}"

    # Internal links must point to a built file, and to an existing anchor in it.
    hrefs = set(browser.execute_script("return [...document.querySelectorAll('a[href]')].map((a) => a.href)"))
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
        elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in anchors(target):
            bad_links.append(f"{href} (no such anchor)")
    assert not bad_links, f"{page}: broken internal links: {sorted(bad_links)}"

    if page.startswith("notebooks/"):
        repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
        colab = "https://colab.research.google.com/github/" + urlsplit(repository).path.strip("/")
        assert any(href.startswith(colab) and href.endswith(f"{page}.ipynb") for href in hrefs), \
            f"{page}: no Colab launch button for {page}.ipynb"


def visible_widget_image(container):
    """PNG screenshot and src of the one widget image that is shown inside `container`."""
    shown = [img for img in container.find_elements(By.CSS_SELECTOR, "img") if img.is_displayed()]
    assert len(shown) == 1, f"expected one visible figure in the widget, found {len(shown)}"
    return shown[0].screenshot_as_png, shown[0].get_attribute("src")


def test_moe_sliders_change_the_figure(browser, base_url, screenshots):
    open_page(browser, base_url, MOE_CHAPTER)
    handles = WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle"),
        message=f"{MOE_CHAPTER}: the slider widgets did not render (is the widget state embedded?)")
    assert len(handles) >= 2, f"{MOE_CHAPTER}: expected the experts and top-k sliders, found {len(handles)}"

    for number, handle in enumerate(handles):
        # The explorer is the nearest widget box that holds both the slider and figures.
        container = handle.find_element(By.XPATH, "ancestor::div[contains(@class, 'widget-box')][.//img][1]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", container)
        before, src_before = visible_widget_image(container)
        container.screenshot(str(screenshots / f"moe_slider{number}_before.png"))
        position = handle.get_attribute("aria-valuenow")
        at_max = float(position) >= float(handle.get_attribute("aria-valuemax"))
        handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
        WebDriverWait(browser, 10).until(lambda d: handle.get_attribute("aria-valuenow") != position,
                                         message=f"slider {number} did not move")
        WebDriverWait(browser, 10).until(lambda d: visible_widget_image(container)[1] != src_before,
                                         message=f"slider {number} moved but the figure stayed the same")
        after, _ = visible_widget_image(container)
        container.screenshot(str(screenshots / f"moe_slider{number}_after.png"))
        assert after != before, f"slider {number}: a different image is shown but it looks the same"

    errors = severe_console_messages(browser)
    assert not errors, f"{MOE_CHAPTER}: JavaScript errors while moving the sliders: {errors}"
