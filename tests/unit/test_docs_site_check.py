"""The docs site's checks: ``.ci/check_docs_site.py`` (run by ``nox -s docs`` on the built
site) and the API reference's griffe extension (``docs/_griffe/sphinx_docstrings.py``),
which leaves doctest directives out of rendered examples."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check() -> ModuleType:
    return load(ROOT / ".ci" / "check_docs_site.py")


# What the readthedocs theme's pages had in their <head>: highlight.js from a CDN.
CDN = "https://cdnjs.cloudflare.com/ajax/libs/highlight.js/11.8.0"
RTD_HEAD = f"""<html><head>
<link rel="stylesheet" href="{CDN}/styles/github.min.css" />
<link rel="stylesheet" href="../css/theme.css" />
<script src="{CDN}/highlight.min.js"></script>
<script src="../js/theme.js"></script>
</head><body><a href="https://www.mkdocs.org/">MkDocs</a></body></html>"""


def test_outside_scripts_and_stylesheets_are_found_links_are_not(check: ModuleType) -> None:
    assert check.html_references(RTD_HEAD) == [
        f"{CDN}/styles/github.min.css",
        "../css/theme.css",
        f"{CDN}/highlight.min.js",
        "../js/theme.js",
    ]
    outside = [url for url in check.html_references(RTD_HEAD) if check.is_outside(url)]
    assert len(outside) == 2  # the two CDN files; the <a href> is a link, not a load


@pytest.mark.parametrize(
    "html",
    [
        '<link rel="preconnect" href="https://fonts.gstatic.com" crossorigin>',  # Material's web fonts
        '<link href="https://fonts.googleapis.com/css?family=Roboto" rel="stylesheet">',
        '<link rel="icon" href="//cdn.example/favicon.png">',  # protocol-relative
        '<img src="http://img.example/x.png">',
        '<img srcset="a.png 1x, https://img.example/b.png 2x">',
        '<div style="background: url(https://img.example/bg.png)"></div>',
        '<style>@import "https://fonts.example/f.css";</style>',
        '<iframe src="https://video.example/embed"></iframe>',
    ],
)
def test_each_kind_of_outside_load_is_found(check: ModuleType, html: str) -> None:
    assert [url for url in check.html_references(html) if check.is_outside(url)] != []


def test_local_and_data_urls_are_inside(check: ModuleType) -> None:
    html = """<link rel="stylesheet" href="assets/stylesheets/main.css">
    <script src="/assets/javascripts/bundle.js"></script><img src="data:image/svg+xml;base64,AAAA">
    <style>.x { background: url("../img/a.png") }
    .y { mask: url('data:image/svg+xml;utf8,<svg/>') }</style>"""
    assert [url for url in check.html_references(html) if check.is_outside(url)] == []


def test_stylesheet_urls_and_imports(check: ModuleType) -> None:
    css = '@import "https://fonts.example/f.css"; @font-face { src: url(https://fonts.example/r.woff2) }'
    assert check.css_references(css) == ["https://fonts.example/r.woff2", "https://fonts.example/f.css"]


def test_doctest_directives_shown_in_code_are_found(check: ModuleType) -> None:
    # Pygments splits a line into spans; the comment is one of them.
    html = (
        '<div class="highlight"><pre><span></span><code><span class="gp">&gt;&gt;&gt; </span>'
        '<span class="n">x</span>  <span class="c1"># doctest: +SKIP</span>\n</code></pre></div>'
        "<p>Prose may name <code># doctest: +SKIP</code> without it being a finding.</p>"
    )
    assert check.shown_directives(html) == ["# doctest: +SKIP"]
    assert check.shown_directives("<pre><code>&gt;&gt;&gt; x  # a comment\n</code></pre>") == []


def test_the_site_check_fails_on_findings_and_passes_a_clean_site(check: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text(RTD_HEAD, encoding="utf-8")
    (tmp_path / "api" / "index.html").write_text("<pre><code>f()  # doctest: +ELLIPSIS</code></pre>")
    (tmp_path / "extra.css").write_text("@font-face { src: url(https://fonts.example/r.woff2) }")
    found = check.findings(tmp_path)
    assert sorted((str(path), what.split()[0]) for path, what in found) == [
        ("api/index.html", "shows"),
        ("extra.css", "loads"),
        ("index.html", "loads"),
        ("index.html", "loads"),
    ]
    assert check.main([str(tmp_path)]) == 1

    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="assets/main.css"><a href="https://x.example">x</a>'
    )
    (tmp_path / "api" / "index.html").write_text("<pre><code>f()</code></pre>")
    (tmp_path / "extra.css").write_text("a { color: red }")
    assert check.findings(tmp_path) == []
    assert check.main([str(tmp_path)]) == 0


def test_an_empty_directory_is_not_a_passing_site(check: ModuleType, tmp_path: Path) -> None:
    assert check.main([str(tmp_path)]) == 2


def test_the_griffe_extension_leaves_doctest_directives_out() -> None:
    extension = load(ROOT / "docs" / "_griffe" / "sphinx_docstrings.py")
    docstring = "\n".join(
        [
            "Make one.",
            "",
            '>>> auth = PrivateKeyJWT("my-client", signer)                     # doctest: +SKIP',
            ">>> async with TokenManager(token_endpoint=url,",
            "...                         client_auth=auth) as tokens:  # doctest: +SKIP",
            "...     token = await tokens.get_token()",
            ">>> sorted(d)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE",
            "[1, ...]",
            ">>> x = 1  # a comment the reader should see",
            "",
            "A paragraph with # doctest: +SKIP in it stays as written.",
        ]
    )
    assert extension.fence_doctests(docstring).splitlines() == [
        "Make one.",
        "",
        "```pycon",
        '>>> auth = PrivateKeyJWT("my-client", signer)',
        ">>> async with TokenManager(token_endpoint=url,",
        "...                         client_auth=auth) as tokens:",
        "...     token = await tokens.get_token()",
        ">>> sorted(d)",
        "[1, ...]",
        ">>> x = 1  # a comment the reader should see",
        "```",
        "",
        "A paragraph with # doctest: +SKIP in it stays as written.",
    ]
