"""MemoryTokenCache and the manager's shared-tier algorithm, in one process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from keyless_m2m import AccessToken, ClientSecretBasic, TokenManager
from keyless_m2m.cache import MemoryTokenCache, TokenCache
from keyless_m2m.errors import CacheUnavailableError
from keyless_m2m.testing import ManualClock
from keyless_m2m.testing.authorization_server import AuthorizationServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=600) as server:
        server.register_client("svc", client_secret="memory-cache-secret-9d")
        yield server


def _manager(server: AuthorizationServer, cache: Any, **options: Any) -> TokenManager:
    return TokenManager(
        server.token_endpoint, ClientSecretBasic("svc", "memory-cache-secret-9d"), cache=cache, **options
    )


def _token(value: str) -> AccessToken:
    return AccessToken(value, "Bearer", datetime.now(UTC) + timedelta(seconds=60), expires_in=60)


def test_memory_cache_satisfies_the_protocol() -> None:
    assert isinstance(MemoryTokenCache(), TokenCache)


async def test_managers_sharing_a_memory_cache_make_one_request(server: AuthorizationServer) -> None:
    server.latency = 0.2
    cache = MemoryTokenCache()
    managers = [_manager(server, cache) for _ in range(5)]
    results: list[AccessToken] = []

    async def call(manager: TokenManager) -> None:
        results.append(await manager.get_token("pockets.read"))

    async with anyio.create_task_group() as tg:
        for manager in managers:
            for _ in range(200):
                tg.start_soon(call, manager)
    assert server.token_requests == 1
    assert len({r.value for r in results}) == 1
    assert sum(m.stats.shared_hits for m in managers) == 4
    for manager in managers:
        await manager.aclose()


async def test_refresh_window_token_in_the_shared_cache_is_replaced_once(
    server: AuthorizationServer, manual_clock: ManualClock
) -> None:
    # 600 s tokens: leeway 10 s, refresh window 150 s, so refreshed from 440 s on.
    cache = MemoryTokenCache()
    a, b = _manager(server, cache), _manager(server, cache)
    first = await a.get_token()
    assert await b.get_token() == first
    manual_clock.advance(441)
    # Both are in the refresh window (no task group: the caller refreshes inline). a
    # replaces the shared token; b finds the replacement instead of fetching its own.
    second = await a.get_token()
    assert second != first
    assert await b.get_token() == second
    assert server.token_requests == 2
    assert b.stats.shared_hits == 2
    await a.aclose()
    await b.aclose()


async def test_fence_and_lease_rules(manual_clock: ManualClock) -> None:
    cache = MemoryTokenCache()
    f1 = await cache.acquire("k", ttl=10)
    assert f1 is not None and await cache.acquire("k", ttl=1) is None
    manual_clock.advance(10)  # the first lease has run out
    f2 = await cache.acquire("k", ttl=1)
    assert f2 is not None and f2 > f1
    assert await cache.put("k", _token("newer"), fence=f2, ttl=60)
    assert not await cache.put("k", _token("older"), fence=f1, ttl=60)
    stored = await cache.get("k")
    assert stored is not None and stored.value == "newer"


async def test_waiter_wakes_on_release_not_at_its_timeout() -> None:
    cache = MemoryTokenCache()
    fence = await cache.acquire("k", ttl=30)
    assert fence is not None
    order: list[str] = []

    async def waiter() -> None:
        await cache.wait("k", max_wait=30)
        order.append("woke")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()  # the waiter is waiting
        order.append("release")
        await cache.release("k", fence)
    assert order == ["release", "woke"]


class _BrokenCache(MemoryTokenCache):
    async def get(self, key: str) -> AccessToken | None:
        raise CacheUnavailableError("down")


async def test_a_broken_cache_costs_sharing_not_tokens(server: AuthorizationServer) -> None:
    async with _manager(server, _BrokenCache()) as manager:
        assert (await manager.get_token()).value
    assert server.token_requests == 1


async def test_waiting_on_a_lease_nobody_finishes_is_bounded(server: AuthorizationServer) -> None:
    cache = MemoryTokenCache()
    probe = _manager(server, cache)
    key = probe._shared_key(probe._default_entry)
    assert await cache.acquire(key, ttl=60) is not None  # a holder that never writes
    async with _manager(server, cache, cache_wait=0.2) as manager:
        assert (await manager.get_token()).value
    assert server.token_requests == 1
    await probe.aclose()
