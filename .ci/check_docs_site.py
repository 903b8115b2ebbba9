"""Check a built docs site for what a reader would notice and ``mkdocs build --strict`` does not.

Usage: ``python .ci/check_docs_site.py SITE_DIR`` (the ``docs`` nox session runs it after
``mkdocs build --strict``).

Outside resources: the site must read the same offline and behind a strict
Content-Security-Policy (``default-src 'self'``), so every resource a browser fetches on
its own while showing a page must come from the site: scripts, stylesheets, fonts, icons,
images, frames, and the ``url()`` / ``@import`` targets of stylesheets. Links a reader
follows (``<a href>``) may point anywhere. ``data:`` URIs are part of the page and allowed.

Doctest directives: a ``# doctest: +SKIP`` comment is for the test runner; the API
reference's griffe extension (``docs/_griffe/``) leaves it out of rendered examples, and no
rendered code block may show one.

Exit status 0 and a one-line summary when the site passes; 1 and one line per finding
(file and what was found) otherwise.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

# rel values of <link> that make the browser fetch (or connect to) the href on its own.
_FETCHING_RELS = frozenset(
    {"stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch", "icon", "manifest"}
)
_SRC_TAGS = frozenset({"script", "img", "iframe", "source", "audio", "video", "embed", "track", "input"})
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+['"]([^'"]+)['"]""", re.IGNORECASE)
_DIRECTIVE = re.compile(r"#\s*doctest:\s*[+-]\w+")
_OUTSIDE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # a scheme, or protocol-relative


def is_outside(url: str) -> bool:
    """True for a URL the browser would fetch from another origin (``data:`` is inside)."""
    url = url.strip()
    return bool(_OUTSIDE.match(url)) and not url.lower().startswith(("data:", "blob:"))


def css_references(css: str) -> list[str]:
    """The URLs a stylesheet makes the browser fetch: ``url(...)`` and ``@import "..."``."""
    return [*_CSS_URL.findall(css), *_CSS_IMPORT.findall(css)]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fetched: list[str] = []
        self.code: list[str] = []  # the text of each code block (<pre>)
        self._in_style = False
        self._code_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "link" and _FETCHING_RELS & set(attr.get("rel", "").lower().split()):
            self.fetched.append(attr.get("href", ""))
        if tag in _SRC_TAGS and "src" in attr:
            self.fetched.append(attr["src"])
        if "srcset" in attr:
            self.fetched.extend(part.split()[0] for part in attr["srcset"].split(",") if part.strip())
        if tag == "object" and "data" in attr:
            self.fetched.append(attr["data"])
        if "style" in attr:
            self.fetched.extend(css_references(attr["style"]))
        self._in_style = tag == "style"
        if tag == "pre":
            if self._code_depth == 0:
                self.code.append("")
            self._code_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False
        if tag == "pre" and self._code_depth:
            self._code_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.fetched.extend(css_references(data))
        if self._code_depth:
            self.code[-1] += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def html_references(html: str) -> list[str]:
    """The URLs a page makes the browser fetch by itself (not the links a reader clicks)."""
    return _parse(html).fetched


def shown_directives(html: str) -> list[str]:
    """The doctest directives (``# doctest: +SKIP``, ...) that a page's code blocks show (inline
    code in prose may name one)."""
    return [m.group(0) for code in _parse(html).code for m in _DIRECTIVE.finditer(code)]


def findings(site: Path) -> list[tuple[Path, str]]:
    """Every (file, finding) in the built site: a resource loaded from outside the site, or a
    doctest directive shown in a code block."""
    found: list[tuple[Path, str]] = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            text = path.read_text(encoding="utf-8")
            urls = html_references(text)
            found.extend((path.relative_to(site), f"shows {d!r}") for d in shown_directives(text))
        elif path.suffix == ".css":
            urls = css_references(path.read_text(encoding="utf-8"))
        else:
            continue
        found.extend((path.relative_to(site), f"loads {url}") for url in urls if is_outside(url))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: check_docs_site.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    pages = sum(1 for _ in site.rglob("*.html"))
    if pages == 0:
        print(f"{site}: no HTML pages (was the site built?)", file=sys.stderr)
        return 2
    found = findings(site)
    for path, what in found:
        print(f"{path}: {what}")
    if found:
        print(
            f"{len(found)} finding(s): the site must bundle its scripts, styles and fonts,"
            " and rendered examples must not show doctest directives"
        )
        return 1
    print(f"{pages} pages checked: every script, stylesheet, font and image is local; no directive shown")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
