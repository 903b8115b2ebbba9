"""RedisTokenCache's arguments, without a Redis (the wire is in tests/integration/cache/test_redis.py)."""

from __future__ import annotations

import warnings

import pytest

from keyless_m2m.errors import ConfigurationError
from tests.helpers import require_module

URL = "redis://127.0.0.1:1/0"  # never connected to: construction is lazy


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    require_module("redis", reason="the redis extra is not installed")


def cache(**options: object) -> object:
    from keyless_m2m.cache import RedisTokenCache

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return RedisTokenCache(URL, encryption_key=bytes(32), **options)  # type: ignore[arg-type]


def test_max_concurrency_bounds_the_worker_threads() -> None:
    assert cache(max_concurrency=3)._limiter.total_tokens == 3  # type: ignore[attr-defined]
    assert cache()._limiter.total_tokens == 8  # type: ignore[attr-defined]


def test_max_threads_is_a_deprecated_name_of_max_concurrency() -> None:
    with pytest.warns(DeprecationWarning, match=r"RedisTokenCache\(max_threads=\.\.\.\) is deprecated"):
        limiter = cache(max_threads=4)._limiter  # type: ignore[attr-defined]
    assert limiter.total_tokens == 4
    with pytest.raises(ConfigurationError, match="not both"):
        cache(max_concurrency=3, max_threads=4)


@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_max_concurrency_has_the_signers_check(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_concurrency must be a positive integer"):
        cache(max_concurrency=value)
