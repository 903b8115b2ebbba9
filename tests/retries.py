"""Checks of "one owner of retries" and of cancellation, shared by the backends' tests.

A signer makes exactly one provider call per ``sign()``/``describe()`` and classifies the
failure (``SigningError.retryable``); the token endpoint is the only layer that retries.
A blocking SDK call that hangs in a worker thread must not hold a cancelled caller.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import httpx
import pytest

from keyless_m2m import PrivateKeyJWT, SigningError
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.signers import Signer

#: The token endpoint's ``max_attempts`` in these tests.
ATTEMPTS = 3


async def failing_sign(signer: Signer, calls: Callable[[], int]) -> tuple[SigningError, int]:
    """The error of one failing ``sign()`` and the provider calls it made."""
    before = calls()
    with pytest.raises(SigningError) as info:
        await signer.sign(b"header.claims")
    return info.value, calls() - before


async def failing_token_request(signer: Signer, calls: Callable[[], int]) -> tuple[SigningError, int]:
    """The error of a token request whose every signature fails, and the provider calls made.

    Signing fails before any HTTP request, so the authorization server is never reached.
    """

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no token request is sent when signing fails")

    await signer.describe()
    before = calls()
    async with httpx.AsyncClient(transport=httpx.MockTransport(unreachable)) as http:
        endpoint = TokenEndpoint(
            "https://as.example/token",
            PrivateKeyJWT("svc", signer),
            http_client=http,
            max_attempts=ATTEMPTS,
            backoff=0.0,
        )
        with pytest.raises(SigningError) as info:
            await endpoint.request()
    return info.value, calls() - before


class Hang:
    """Call it inside an SDK call (a hook, an adapter, a credential): it blocks the worker
    thread until :attr:`release` is set (or 3 s pass, so that a failing test ends)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        try:
            self.release.wait(3)
        finally:
            self.left.set()


async def assert_cancel_releases_the_caller(call: Callable[[], Awaitable[object]], hang: Hang) -> None:
    """A caller's cancel scope ends a hanging blocking call within well under a second;
    then the hang is released and the worker thread is seen to leave it."""
    try:
        with anyio.fail_after(2):  # the bound; the release itself is measured below
            started = anyio.current_time()
            with anyio.move_on_after(0.5) as scope:
                await call()
            elapsed = anyio.current_time() - started
        assert hang.entered.is_set(), "the SDK call never reached the hang"
        assert scope.cancelled_caught
        assert elapsed < 1.0, f"the caller was released after {elapsed:.2f} s"
    finally:
        hang.release.set()
        # The abandoned thread finishes on its own; the test leaves no thread blocked.
        assert await anyio.to_thread.run_sync(hang.left.wait, 5)
