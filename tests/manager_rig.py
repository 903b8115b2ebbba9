"""The token manager's test rig: a counting signer and a loopback authorization server.

Used by the manager's, the bearer flow's and the sync facade's unit tests (their fixtures
are in ``tests/unit/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx

from keyless_m2m import (
    AccessToken,
    PrivateKeyJWT,
    TokenManager,
)
from keyless_m2m.signers import KeyDescription, LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import make_key, pem_of

FAST_RETRY: dict[str, Any] = {"backoff": 0.01, "max_backoff": 0.02, "max_attempts": 2}


class CountingSigner:
    """A Signer that counts signatures and can take its time (like a KMS round trip)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = LocalSigner.from_pem(pem_of(make_key("p256")))
        self.delay = delay
        self.signatures = 0

    async def describe(self) -> KeyDescription:
        return await self.inner.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        self.signatures += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return await self.inner.sign(signing_input)

    async def aclose(self) -> None:
        return None


async def until(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Checkpoint until ``condition()`` holds, at most ``timeout`` seconds: for what another
    thread (the loopback server) or task does. Never for the manager's clock: advance the
    ``manual_clock`` for that."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)  # a polling interval, not a wait for the manager


def manager(server: AuthorizationServer, signer: CountingSigner, **options: Any) -> TokenManager:
    return TokenManager(server.token_endpoint, PrivateKeyJWT("svc", signer), scope="pockets.read", **options)


def run_without_suspending(coro: Any) -> Any:
    """Drive a coroutine one step: proves it finishes without yielding to the event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("get_token() suspended: the hot path must not yield")


async def gather_tokens(tokens: TokenManager, n: int, **kwargs: Any) -> list[AccessToken]:
    results: list[AccessToken] = []

    async def one() -> None:
        results.append(await tokens.get_token(**kwargs))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


class Api:
    """An API that rejects the first ``reject`` distinct tokens with invalid_token."""

    def __init__(self, reject: int = 1) -> None:
        self.reject = reject
        self.rejected: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        self.calls.append(auth)
        if len(self.rejected) < self.reject or auth in self.rejected:
            self.rejected.add(auth)
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'}
            )
        return httpx.Response(200, json={"ok": True})
