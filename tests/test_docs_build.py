"""The built documentation works offline: no page loads a script from the network.

These tests read a site that ``sphinx-build`` has already written; they skip when
there is none. The site is ``docs/_build/html`` (where .ci/run builds it), or the
folder that ``EMLMM_DOCS_HTML`` names:

    sphinx-build -E -W -n -b html docs docs/_build/html
    pytest tests/test_docs_build.py
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("EMLMM_DOCS_HTML", ROOT / "docs" / "_build" / "html"))

# http:, https:, protocol-relative //host, or any other scheme but file:
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)
LOCAL_SCHEMES = ("file:", "data:")


class _Resources(HTMLParser):
    """The scripts, stylesheets and preloads a page asks for, and whether it has math."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []  # (tag, URL)
        self.has_math = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.loads.append((tag, values["src"]))
        elif tag == "link" and values.get("href"):
            rel = values.get("rel", "").lower().split()
            if {"stylesheet", "preload", "modulepreload", "prefetch"} & set(rel):
                self.loads.append((tag, values["href"]))
        if "math" in values.get("class", "").split():
            self.has_math = True


def _is_remote(url: str) -> bool:
    return bool(REMOTE.match(url)) and not url.strip().lower().startswith(LOCAL_SCHEMES)


@pytest.fixture(scope="module")
def site() -> list[tuple[Path, _Resources]]:
    """Every page of the built site, parsed once."""
    if not (SITE / "index.html").is_file():
        pytest.skip(f"no built documentation in {SITE} (run sphinx-build first)")
    parsed = []
    for page in sorted(SITE.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        parsed.append((page, parser))
    return parsed


def test_no_page_loads_remote_resources(site: list[tuple[Path, _Resources]]) -> None:
    remote = [
        f"{page.relative_to(SITE)}: <{tag}> {url}"
        for page, parsed in site
        for tag, url in parsed.loads
        if _is_remote(url)
    ]
    assert not remote, (
        f"pages of {SITE} load from the network (an old build? rebuild it with "
        "sphinx-build -E):\n" + "\n".join(remote)
    )


def test_math_pages_load_the_bundled_mathjax(site: list[tuple[Path, _Resources]]) -> None:
    checked = 0
    for page, parsed in site:
        if not parsed.has_math:
            continue
        mathjax = [url for tag, url in parsed.loads if tag == "script" and "mathjax" in url]
        assert mathjax, f"{page.relative_to(SITE)} has math but loads no MathJax"
        for url in mathjax:
            target = (page.parent / url.split("?")[0]).resolve()
            assert target.is_file(), f"{page.relative_to(SITE)}: {url} is not in the site"
        checked += 1
    assert checked, "no page has math: the landing page's model should"


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        ("https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js", True),
        ("HTTP://example.org/x.js", True),
        ("//cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js", True),
        ("_static/mathjax/tex-chtml.js", False),
        ("../_static/doctools.js?v=fd6eb6e6", False),
        ("/_static/x.js", False),
        ("data:text/javascript,", False),
    ],
)
def test_remote_urls_are_recognised(url: str, remote: bool) -> None:
    assert _is_remote(url) is remote
