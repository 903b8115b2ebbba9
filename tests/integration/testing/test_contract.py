"""keyless_m2m.testing.contract.check_token_cache against a real Redis (redis-server on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from keyless_m2m.cache import RedisTokenCache
from keyless_m2m.testing.contract import check_token_cache
from tests.helpers import require_module
from tests.redis_server import RedisServer, require_redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
require_module("redis", reason="the redis extra is not installed")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server()).start()
    try:
        yield server
    finally:
        server.close()


async def test_redis_token_cache_passes(redis_server: RedisServer) -> None:
    namespace = f"contract-{uuid.uuid4().hex[:12]}"
    await check_token_cache(lambda: RedisTokenCache(redis_server.url, namespace=namespace))
