"""Griffe extension for the API reference: read this project's docstrings as Markdown.

The docstrings are written for readers of the source and for ``doctest``: examples are
``>>>`` sessions, and other objects are named with Sphinx roles
(:class:`~keyless_m2m.TokenManager`). In Markdown the first would become nested block
quotes and the second plain text with the role in it, so before mkdocstrings renders a
docstring this extension puts each run of ``>>>`` / ``...`` lines in a ``pycon`` code
block, turns each role into a code span (the short name when the target starts with
``~``, as Sphinx shows it), and ends a paragraph that introduces a literal block with one
colon instead of reST's two. Doctest directive comments (``# doctest: +SKIP``,
``+ELLIPSIS``, ...) are instructions to the test runner, not part of the example: they are
left out of the rendered session (the docstring itself keeps them).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):`(~?)([^`]+)`")
_PROMPT = re.compile(r"^(\s*)(>>>|\.\.\.)( |$)")
_LITERAL_INTRO = re.compile(r"(?<=\S)::$", re.MULTILINE)  # "text::" introduces a literal block
# A trailing "# doctest: +SKIP" / "# doctest: +ELLIPSIS, -NORMALIZE_WHITESPACE" comment, with the
# spaces that aligned it (doctest's own syntax: options are [+-]NAME, comma or space separated).
_DIRECTIVE = re.compile(r"\s*#\s*doctest:\s*[+-]\w+(?:\s*,?\s*[+-]\w+)*\s*$")


def _role(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def strip_directive(line: str) -> str:
    """A session's source line without its trailing doctest directive comment, if any."""
    return _DIRECTIVE.sub("", line)


def fence_doctests(text: str) -> str:
    """Fence each doctest session: from a ``>>>`` line to the next blank line, as doctest reads it.

    Within a session, the directive comment of each ``>>>`` / ``...`` line is left out."""
    out: list[str] = []
    indent: str | None = None  # the open session's indentation
    for line in text.splitlines():
        if indent is None:
            prompt = _PROMPT.match(line)
            if prompt:
                indent = prompt.group(1)
                out.append(f"{indent}```pycon")
        elif not line.strip():
            out.append(f"{indent}```")
            indent = None
        out.append(strip_directive(line) if indent is not None and _PROMPT.match(line) else line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class SphinxDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _ROLE.sub(_role, fence_doctests(obj.docstring.value))
            obj.docstring.value = _LITERAL_INTRO.sub(":", text)
