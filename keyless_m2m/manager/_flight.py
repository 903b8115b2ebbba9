"""One token fetch shared by everyone waiting for it (single flight)."""

from __future__ import annotations

import copy

import anyio

from ..errors import KeylessM2MError
from ..token import AccessToken

__all__ = ["Flight", "fresh_copy"]


class Flight:
    """One token fetch, shared by everyone waiting for it.

    ``abandoned``: its leader was cancelled before it ended (a flight run inline, outside
    ``async with``); a waiter then starts the next one.
    """

    __slots__ = ("abandoned", "done", "error", "token")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.token: AccessToken | None = None
        self.error: KeylessM2MError | None = None
        self.abandoned = False

    def result(self) -> AccessToken:
        if self.token is not None:
            return self.token
        if self.error is None:  # a bug: a flight ended with neither
            raise KeylessM2MError("the token fetch ended without a token or an error")
        raise fresh_copy(self.error)


def fresh_copy(error: KeylessM2MError) -> KeylessM2MError:
    """A copy of a shared error for one waiter (raising one instance in thousands of tasks
    would grow its traceback without bound)."""
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__suppress_context__ = True
    return clone
