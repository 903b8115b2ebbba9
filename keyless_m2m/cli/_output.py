"""Where ``keyless-m2m`` writes: results to stdout, messages to stderr, each line flushed;
and the compact forms it prints JSON and assertions in."""

from __future__ import annotations

import json
import sys
from typing import Any

from .._jose import b64url_decode

__all__ = ["PROG", "compact", "decode_assertion", "err", "in_cli_words", "out"]

PROG = "keyless-m2m"

# The library's errors name its Python arguments; a CLI user passes the flag instead.
_FLAGS_FOR_ARGUMENTS = {
    "pass allow_insecure_http=True": "pass --allow-insecure-http",
}


def in_cli_words(message: str) -> str:
    """An error message with the library's argument names replaced by the CLI's flags.

    >>> in_cli_words("http is allowed for loopback hosts; pass allow_insecure_http=True to override")
    'http is allowed for loopback hosts; pass --allow-insecure-http to override'
    """
    for argument, flag in _FLAGS_FOR_ARGUMENTS.items():
        message = message.replace(argument, flag)
    return message


def out(text: str = "") -> None:
    """A result line, on stdout."""
    print(text, file=sys.stdout, flush=True)


def err(text: str) -> None:
    """A message line, on stderr."""
    print(text, file=sys.stderr, flush=True)


def compact(obj: Any) -> str:
    """JSON on one line, without spaces."""
    return json.dumps(obj, separators=(",", ":"))


def _decode_segment(segment: str) -> Any:
    return json.loads(b64url_decode(segment))


def decode_assertion(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS (not verified: for display)."""
    header, claims, _signature = assertion.split(".")
    return _decode_segment(header), _decode_segment(claims)
