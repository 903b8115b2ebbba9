"""The exit codes of ``keyless-m2m``: one table, read by :func:`exit_code_for` and by the
``exit codes:`` epilog of every ``--help``.

A new code, or an error class that moves to another code, is one edit to
:data:`EXIT_CODES` (and, if it changes which check wins, to :data:`_PRECEDENCE`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from ..errors import (
    ConfigurationError,
    DiscoveryError,
    InvalidTokenResponseError,
    KeylessM2MError,
    SigningError,
    TokenRequestError,
    TransportError,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CODES",
    "EXIT_CODES_HELP",
    "EXIT_DISCOVERY",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_REJECTED",
    "EXIT_SIGNING",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ExitCode",
    "exit_code_for",
]

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_UNAVAILABLE = 4
EXIT_SIGNING = 5
EXIT_DISCOVERY = 6
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left


@dataclass(frozen=True, slots=True)
class ExitCode:
    """One exit code: what it means, and which errors end the command with it.

    ``errors`` are the classes that map to it, ``retryable`` whether any retryable
    :class:`~keyless_m2m.KeylessM2MError` does too; ``shown_as`` is how ``--help`` names
    them, and ``in_help`` whether ``--help`` lists the code at all.
    """

    code: int
    meaning: str
    errors: tuple[type[BaseException], ...] = ()
    retryable: bool = False
    shown_as: str = ""
    in_help: bool = True

    def matches(self, error: BaseException) -> bool:
        if isinstance(error, self.errors):
            return True
        return self.retryable and isinstance(error, KeylessM2MError) and error.retryable


OK = ExitCode(EXIT_OK, "success")
OTHER = ExitCode(EXIT_OTHER, "any other error")
USAGE = ExitCode(
    EXIT_USAGE,
    "usage or configuration error",
    (ConfigurationError,),
    shown_as="ConfigurationError, MissingExtraError",
)
REJECTED = ExitCode(
    EXIT_REJECTED,
    "the authorization server refused the request",
    (TokenRequestError,),
    shown_as="TokenRequestError: invalid_client, ...",
)
UNAVAILABLE = ExitCode(
    EXIT_UNAVAILABLE,
    "the server or network is unavailable",
    (TransportError,),
    retryable=True,
    shown_as="TransportError, 5xx, 429, temporarily_unavailable",
)
SIGNING = ExitCode(EXIT_SIGNING, "the signer failed", (SigningError,), shown_as="SigningError")
DISCOVERY = ExitCode(
    EXIT_DISCOVERY,
    "discovery failed or the server's answer is invalid",
    (DiscoveryError, InvalidTokenResponseError),
    shown_as="DiscoveryError, InvalidTokenResponseError",
)
INTERRUPTED = ExitCode(EXIT_INTERRUPTED, "interrupted", (KeyboardInterrupt,), in_help=False)
# stdout closed early (`keyless-m2m jwks | head -0`): quiet, as cat or git are, and 141
# rather than 0 so that a pipeline under `set -o pipefail` sees the output was cut short.
BROKEN_PIPE = ExitCode(
    EXIT_BROKEN_PIPE, "stdout was closed before the output was written", (BrokenPipeError,), in_help=False
)

EXIT_CODES: tuple[ExitCode, ...] = (
    OK,
    OTHER,
    USAGE,
    REJECTED,
    UNAVAILABLE,
    SIGNING,
    DISCOVERY,
    INTERRUPTED,
    BROKEN_PIPE,
)
"""Every exit code, in the order ``--help`` lists them."""

# The first that matches wins. A signer's error is the signer's (5) even when retryable
# (throttling); any other retryable error is an outage (4) before it is a refusal (3) or
# bad metadata (6). Anything else, our errors included, is 1.
_PRECEDENCE = (INTERRUPTED, BROKEN_PIPE, USAGE, SIGNING, UNAVAILABLE, REJECTED, DISCOVERY)


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error (see :data:`EXIT_CODES`).

    >>> exit_code_for(SigningError("throttled", retryable=True))
    5
    """
    return next((row.code for row in _PRECEDENCE if row.matches(error)), EXIT_OTHER)


def _help_text() -> str:
    lines = ["exit codes:"]
    for row in EXIT_CODES:
        if row.in_help:
            entry = f"{row.code}  {row.meaning}" + (f" ({row.shown_as})" if row.shown_as else "")
            # 95 columns: the longest entry (4) fits on one line, 6 wraps under its meaning.
            lines += textwrap.wrap(entry, width=95, initial_indent="  ", subsequent_indent="     ")
    return "\n".join(lines) + "\n"


EXIT_CODES_HELP = _help_text()
"""The ``exit codes:`` epilog of ``--help``, made from :data:`EXIT_CODES`."""
