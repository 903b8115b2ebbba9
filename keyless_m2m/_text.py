"""Text that came from elsewhere (a server's answer, an OpenSSL reason, a header), made
safe to put in a message or a log line: every unprintable character (a newline, an ANSI
escape, a NUL) becomes ``?``, so it can forge no line and move no cursor, and a long text
is cut. A leaf: imports nothing of the package."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every unprintable character replaced by ``?``, cut to ``limit``
    characters (then ``...``) when it is longer."""
    if not text.isprintable():  # most texts are: no pass over their characters
        text = "".join(ch if ch.isprintable() else "?" for ch in text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text
