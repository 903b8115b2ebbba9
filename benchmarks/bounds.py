"""``python -m benchmarks.bounds``: the token manager's bounds under adversarial use.

Prints what the fault table in ``docs/reliability.md`` ("Bounds") reports: many concurrent
cold scope sets against the default ``max_entries``, a second scope with
``max_entries=1``, the state a ``MemoryTokenCache`` keeps after 20,000 keys, and how long a
cold ``get_token()`` waits on a shared-cache lease that is never released. The token
endpoint is an in-process stand-in answering after 10 ms, so only the manager is measured.
"""

from __future__ import annotations

import logging
import time

import anyio

from keyless_m2m import TokenManager
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint


async def _cold_audiences(n: int = 200) -> str:
    async with TokenManager(endpoint=OfflineTokenEndpoint(delay=0.01), scope="s") as tokens:
        errors = 0

        async def one(i: int) -> None:
            nonlocal errors
            try:
                await tokens.get_token(audience=f"urn:api:{i}")
            except Exception:
                errors += 1

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        first = errors
        errors = 0
        for i in range(n):
            await one(i)
        return (
            f"{n} concurrent cold audiences, max_entries={tokens.max_entries}: {first} errors, then "
            f"{errors} of {n} later calls failing; {tokens.stats.evictions} valid tokens evicted"
        )


async def _one_entry() -> str:
    async with TokenManager(endpoint=OfflineTokenEndpoint(delay=0.01), scope="s", max_entries=1) as tokens:
        try:
            for _ in range(2):
                await tokens.get_token("reports.read")
        except Exception as exc:
            return f"max_entries=1, get_token('reports.read') twice: {type(exc).__name__}"
        return "max_entries=1, get_token('reports.read') twice: ok"


async def _memory_cache_state(keys: int = 20_000) -> str:
    cache = MemoryTokenCache(max_entries=10)
    token = await OfflineTokenEndpoint(delay=0.01).request()
    for i in range(keys):
        fence = await cache.acquire(f"k{i}", ttl=5)
        assert fence is not None
        await cache.put(f"k{i}", token, fence=fence, ttl=60)
        await cache.release(f"k{i}", fence)
    held = sum(len(v) for v in vars(cache).values() if isinstance(v, dict))
    return f"MemoryTokenCache(max_entries=10) after {keys} keys: {held} per-key items held"


async def _stuck_lease() -> str:
    cache = MemoryTokenCache()
    async with TokenManager(endpoint=OfflineTokenEndpoint(delay=0.01), cache=cache) as tokens:
        await cache.acquire(tokens._shared_key(tokens._default_entry), ttl=10_000)
        started = time.monotonic()
        await tokens.get_token()
        return (
            f"a lease held for 10,000 s, deadline={tokens.endpoint.deadline:g} s: cold get_token() "
            f"took {time.monotonic() - started:.1f} s"
        )


async def main() -> None:
    for scenario in (_cold_audiences, _one_entry, _memory_cache_state, _stuck_lease):
        print(await scenario())


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    anyio.run(main)
