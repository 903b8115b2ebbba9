"""One process of the cross-process shared-cache tests (run by test_redis_cache.py).

``python -m tests.redis_worker CONFIG_JSON``: builds a TokenManager with a
RedisTokenCache, prints ``ready``, then reads one line from stdin: a JSON list of
wall-clock start times. At each, ``tasks`` tasks call ``get_token()`` at once; after
each phase it prints one JSON line: the SHA-256 prefixes of the tokens seen (never the
tokens), the error types, and the manager's counters.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import anyio

from keyless_m2m import ClientSecretBasic, KeylessM2MError, TokenManager
from keyless_m2m.cache import RedisTokenCache


async def main(config: dict[str, Any]) -> None:
    cache = RedisTokenCache(config["redis_url"], namespace=config["namespace"])
    manager = TokenManager(
        config["token_endpoint"],
        ClientSecretBasic(config["client_id"], config["client_secret"]),
        scope="pockets.read",
        cache=cache,
        refresh_window=config.get("refresh_window", 0.0),
        cache_lock_ttl=config.get("lock_ttl", 10.0),
        cache_wait=config.get("cache_wait"),
    )
    async with cache, manager:
        print("ready", flush=True)
        starts = json.loads(await anyio.to_thread.run_sync(sys.stdin.readline))
        for start in starts:
            await anyio.sleep(max(0.0, start - time.time()))
            seen: set[str] = set()
            errors: list[str] = []

            async def call(seen: set[str] = seen, errors: list[str] = errors) -> None:
                try:
                    token = await manager.get_token()
                except KeylessM2MError as exc:
                    errors.append(type(exc).__name__)
                else:
                    seen.add(hashlib.sha256(token.value.encode()).hexdigest()[:16])

            async with anyio.create_task_group() as tg:
                for _ in range(config["tasks"]):
                    tg.start_soon(call)
            stats = manager.stats
            print(
                json.dumps(
                    {
                        "tokens": sorted(seen),
                        "errors": errors,
                        "requests": stats.requests,
                        "shared_hits": stats.shared_hits,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]), backend=sys.argv[2] if len(sys.argv) > 2 else "asyncio")
