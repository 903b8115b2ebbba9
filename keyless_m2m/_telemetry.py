"""The hook interface the telemetry integrations plug into (OpenTelemetry, your own).

The lower layers call these functions on their fetch and signing paths, never on the
cache-hit path: a token fetch (the manager, around the whole fetch), a retry (the
endpoint, between attempts), a wait for another process's fetch (the shared cache tier)
and a signature (client assertions and DPoP proofs). With no hooks installed (the
default) each is one global read and a branch; nothing is imported, allocated or locked.

:func:`install` sets the one process-wide :class:`Hooks` (an integration's ``instrument()``
does it); :func:`uninstall` removes it. Everything handed to a hook is free of secrets: a
library error (whose message is already scrubbed of what was sent), or only the type name
of any other exception (an SDK's message may hold anything).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from time import monotonic
from typing import Protocol, TypeVar

import anyio

from .errors import KeylessM2MError, SigningError

__all__ = [
    "FetchInfo",
    "FetchObservation",
    "Hooks",
    "install",
    "installed",
    "observe_fetch",
    "retrying",
    "shared_wait",
    "sign",
    "uninstall",
]

T = TypeVar("T")


class Signer(Protocol):
    """What the hooks see of a :class:`~keyless_m2m.signers.Signer` (this module sits
    below the signers)."""

    async def sign(self, signing_input: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FetchInfo:
    """One token fetch, as it starts: ``url`` (the token endpoint), ``auth_method``
    (``private_key_jwt``, ``client_secret_basic``...), ``scope`` (the requested scope, or
    ``None``), ``background`` (a refresh in the manager's task group, not a caller's),
    ``refresh_lag`` (seconds between when the refresh window opened and this refresh, for
    a token that is being replaced; ``None`` for a first fetch or after an invalidation)
    and ``shared_cache`` (a shared token cache is consulted first)."""

    url: str
    auth_method: str
    scope: str | None
    background: bool
    refresh_lag: float | None
    shared_cache: bool


class FetchObservation(AbstractContextManager["FetchObservation"], Protocol):
    """What a hook returns for one fetch: entered around the fetch (an OpenTelemetry
    span is the current span inside it), then told how it ended, once."""

    def succeeded(self, *, attempts: int, from_shared_cache: bool) -> None: ...

    def failed(self, error: KeylessM2MError, *, attempts: int, cause: str | None) -> None: ...

    def cancelled(self, *, attempts: int) -> None: ...


class Hooks(Protocol):
    """The process-wide telemetry hooks (see the module docstring)."""

    def token_fetch(self, info: FetchInfo) -> FetchObservation: ...

    def retry(self, attempt: int, error: KeylessM2MError, delay: float) -> None: ...

    def shared_wait(self, seconds: float) -> None: ...

    async def sign(self, signer: Signer, signing_input: bytes, purpose: str) -> bytes: ...


_hooks: Hooks | None = None


def install(hooks: Hooks) -> None:
    """Make ``hooks`` the process-wide telemetry hooks (replacing any others)."""
    global _hooks
    _hooks = hooks


def uninstall(hooks: Hooks | None = None) -> None:
    """Remove the hooks (only ``hooks``, when given and still the installed ones)."""
    global _hooks
    if hooks is None or _hooks is hooks:
        _hooks = None


def installed() -> Hooks | None:
    return _hooks


async def observe_fetch(
    info: Callable[[], FetchInfo], fetch: Callable[[], Awaitable[T]], requests: Callable[[], int]
) -> T:
    """``await fetch()``, observed by the hooks when there are any; ``requests`` counts the
    HTTP attempts so far (the difference is the fetch's). A non-library exception reaches
    the hook as its type name only; the caller turns it into a library error."""
    hooks = _hooks
    if hooks is None:
        return await fetch()
    before = requests()
    started = info()
    with hooks.token_fetch(started) as observation:
        try:
            result = await fetch()
        except KeylessM2MError as exc:
            observation.failed(exc, attempts=requests() - before, cause=None)
            raise
        except anyio.get_cancelled_exc_class():
            observation.cancelled(attempts=requests() - before)
            raise
        except Exception as exc:
            # The manager raises a SigningError in its place (see TokenManager._run_flight).
            error = SigningError(
                "client authentication failed: the signer or client auth raised an exception"
            )
            observation.failed(error, attempts=requests() - before, cause=type(exc).__name__)
            raise
        sent = requests() - before
        # No request sent and a shared cache consulted: the token came from there.
        observation.succeeded(attempts=sent, from_shared_cache=started.shared_cache and sent == 0)
        return result


def retrying(attempt: int, error: KeylessM2MError, delay: float) -> None:
    """Attempt ``attempt`` failed with ``error``; the next one starts in ``delay`` s."""
    hooks = _hooks
    if hooks is not None:
        hooks.retry(attempt, error, delay)


def shared_wait(started: float) -> None:
    """A wait for another manager's fetch (the shared cache's lease), begun at ``started``
    (monotonic), has ended."""
    hooks = _hooks
    if hooks is not None:
        hooks.shared_wait(monotonic() - started)


async def sign(signer: Signer, signing_input: bytes, purpose: str) -> bytes:
    """``signer.sign(signing_input)``, observed; ``purpose``: ``client_assertion`` or
    ``dpop_proof``."""
    hooks = _hooks
    if hooks is None:
        return await signer.sign(signing_input)
    return await hooks.sign(signer, signing_input, purpose)
