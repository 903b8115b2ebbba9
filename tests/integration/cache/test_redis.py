"""RedisTokenCache against a real redis-server on loopback: sharing across managers and
processes, the lease and fencing tokens, encryption at rest, and a Redis that goes away."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from keyless_m2m import AccessToken, ClientSecretBasic, TokenManager
from keyless_m2m.cache import RedisTokenCache, TokenCache
from keyless_m2m.cache.redis import _Codec
from keyless_m2m.errors import CacheDecryptionError, CacheUnavailableError, ConfigurationError
from keyless_m2m.testing import ManualClock
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import require_module
from tests.processes import free_port, stop_process
from tests.redis_server import RedisServer, require_redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
require_module("redis", reason="the redis extra is not installed")

ROOT = Path(__file__).resolve().parents[3]  # tests/integration/cache/ -> the repository
CLIENT_ID = "svc-shared-cache"
SECRET = "shared-cache-client-secret-42f1"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server()).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def auth_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=600) as server:
        server.register_client(CLIENT_ID, client_secret=SECRET)
        yield server


def _manager(server: AuthorizationServer, cache: TokenCache, **options: Any) -> TokenManager:
    return TokenManager(
        server.token_endpoint,
        ClientSecretBasic(CLIENT_ID, SECRET),
        scope="pockets.read",
        cache=cache,
        **options,
    )


@contextlib.asynccontextmanager
async def _two_processes(
    url: str, namespace: str, server: AuthorizationServer, **cache_options: Any
) -> AsyncIterator[tuple[TokenManager, TokenManager, RedisTokenCache]]:
    """Two managers, each with its own RedisTokenCache, as two processes would have;
    also yields the first one's cache."""
    async with (
        RedisTokenCache(url, namespace=namespace, **cache_options) as cache_a,
        RedisTokenCache(url, namespace=namespace, **cache_options) as cache_b,
        # Tests here invalidate on purpose to force fetches: no invalidation floor.
        _manager(server, cache_a, min_invalidation_interval=0) as a,
        _manager(server, cache_b, min_invalidation_interval=0) as b,
    ):
        yield a, b, cache_a


def _token(value: str = "tok-value-a", lifetime: float = 300) -> AccessToken:
    now = datetime.now(UTC)
    return AccessToken(
        value=value, token_type="Bearer", expires_at=now + timedelta(seconds=lifetime), expires_in=lifetime
    )


# -- sharing in one process ---------------------------------------------------------------


async def test_two_managers_share_one_token_request(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    async with _two_processes(redis_server.url, namespace, auth_server) as (a, b, _):
        first = await a.get_token()
        second = await b.get_token()
        assert first == second
        assert auth_server.token_requests == 1
        assert (a.stats.shared_hits, b.stats.shared_hits) == (0, 1)
        # Another scope set is another entry, in Redis too.
        await b.get_token("transfers.read")
        assert auth_server.token_requests == 2


async def test_key_names_hold_no_client_id_scope_or_secret(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    async with (
        RedisTokenCache(redis_server.url, namespace=namespace) as cache,
        _manager(auth_server, cache) as m,
    ):
        token = await m.get_token()
        names = await _keys(cache, namespace)
    assert names, "nothing was written to Redis"
    for name in names:
        for forbidden in (CLIENT_ID, SECRET, "pockets", token.value, auth_server.token_endpoint):
            assert forbidden not in name
        assert name.startswith(f"{namespace}:{{")


async def _keys(cache: RedisTokenCache, namespace: str) -> list[str]:
    raw = await cache._call("keys", f"{namespace}:*")
    return sorted(n.decode() if isinstance(n, bytes) else n for n in raw)


async def test_invalidated_token_is_not_served_back_from_redis(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    async with _two_processes(redis_server.url, namespace, auth_server) as (a, b, _):
        old = await a.get_token()
        assert await b.get_token() == old
        # The API rejected the token: both managers invalidate it, one new request in all.
        assert await a.invalidate(old) and await b.invalidate(old)
        new_a = await a.get_token()
        new_b = await b.get_token()
        assert new_a == new_b != old
        assert auth_server.token_requests == 2


# -- the lease and fencing tokens -----------------------------------------------------------


async def test_lease_is_exclusive_and_fences_grow(redis_server: RedisServer, namespace: str) -> None:
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        first = await cache.acquire("k", ttl=5)
        assert first is not None
        assert await cache.acquire("k", ttl=5) is None
        await cache.release("k", first + 1000)  # not the holder's fence: nothing happens
        assert await cache.acquire("k", ttl=5) is None
        await cache.release("k", first)
        second = await cache.acquire("k", ttl=5)
        assert second is not None and second > first


async def test_stale_fencing_token_cannot_overwrite(redis_server: RedisServer, namespace: str) -> None:
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        stale = await cache.acquire("k", ttl=0.05)
        assert stale is not None
        await anyio.sleep(0.1)  # the stale holder stalls past its lease: Redis's key TTL, not our clock
        fresh = await cache.acquire("k", ttl=5)
        assert fresh is not None and fresh > stale
        assert await cache.put("k", _token("newer-token"), fence=fresh, ttl=60)
        assert not await cache.put("k", _token("older-token"), fence=stale, ttl=60)
        stored = await cache.get("k")
        assert stored is not None and stored.value == "newer-token"
        # Even once the counter is reset, a new lease is fenced above the stored entry.
        await cache._call("delete", cache.names("k")[2])
        await cache.release("k", fresh)
        after_reset = await cache.acquire("k", ttl=5)
        assert after_reset is not None and after_reset > fresh


async def test_entry_expires_in_redis_with_the_token(redis_server: RedisServer, namespace: str) -> None:
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        assert await cache.put("k", _token(), fence=1, ttl=0.1)
        ttl_ms = await cache._call("pttl", cache.names("k")[0])
        assert 0 < ttl_ms <= 100
        await anyio.sleep(0.15)  # Redis expires the key on its own clock, not the manager's
        assert await cache.get("k") is None


async def test_manager_writes_ttl_of_usable_lifetime(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    auth_server.expires_in = 100  # leeway is a tenth: usable for 90 s
    async with (
        RedisTokenCache(redis_server.url, namespace=namespace) as cache,
        _manager(auth_server, cache) as m,
    ):
        await m.get_token()
        (token_name,) = [n for n in await _keys(cache, namespace) if n.endswith(":tok")]
        ttl_ms = await cache._call("pttl", token_name)
    assert 85_000 < ttl_ms <= 90_000


# -- encryption at rest ---------------------------------------------------------------------


async def test_encrypted_entries_need_the_right_key(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    key_1, key_2 = RedisTokenCache.generate_key(), RedisTokenCache.generate_key()
    async with (
        RedisTokenCache(redis_server.url, namespace=namespace, encryption_key=key_1) as sealed,
        RedisTokenCache(redis_server.url, namespace=namespace, encryption_key=key_2) as wrong_key,
        RedisTokenCache(redis_server.url, namespace=namespace, encryption_key=[key_2, key_1]) as rotated,
        RedisTokenCache(redis_server.url, namespace=namespace) as no_key,
    ):
        secret_value = "at-very-secret-token-value-1234"
        assert await sealed.put("k", _token(secret_value), fence=1, ttl=60)
        raw = await sealed._call("hget", sealed.names("k")[0], "data")
        assert secret_value.encode() not in raw and b"Bearer" not in raw
        with caplog.at_level(logging.WARNING, logger="keyless_m2m"):
            assert await wrong_key.get("k") is None  # a miss, not an exception
            assert await no_key.get("k") is None
        rotated_read = await rotated.get("k")
        assert rotated_read is not None and rotated_read.value == secret_value
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) >= 2  # both misses were logged, and neither shows the token
        assert not [m for m in messages if secret_value in m]
        # Whoever can write to Redis cannot plant a plaintext token for a sealed cache.
        assert await no_key.put("k", _token("planted"), fence=2, ttl=60)
        assert await sealed.get("k") is None


def test_codec_errors_are_typed_and_bound_to_the_key_name() -> None:
    key_1, key_2 = os.urandom(32), os.urandom(32)
    data = _Codec([key_1]).encode(_token(), b"ns:{a}:tok")
    with pytest.raises(CacheDecryptionError, match="not configured"):
        _Codec([key_2]).decode(data, b"ns:{a}:tok")
    with pytest.raises(CacheDecryptionError, match="does not authenticate"):
        _Codec([key_1]).decode(data, b"ns:{b}:tok")  # copied under another key name
    with pytest.raises(CacheDecryptionError, match="does not authenticate"):
        _Codec([key_1]).decode(data[:-3] + b"AAA", b"ns:{a}:tok")
    assert _Codec([key_1]).decode(data, b"ns:{a}:tok").value == "tok-value-a"
    with pytest.raises(ConfigurationError, match="encryption keys must be 16, 24 or 32 random bytes"):
        _Codec([b"short"])


# -- a Redis that goes away -----------------------------------------------------------------


async def test_redis_down_falls_back_then_shares_again(
    namespace: str,
    auth_server: AuthorizationServer,
    caplog: pytest.LogCaptureFixture,
    manual_clock: ManualClock,
) -> None:
    redis = RedisServer(require_redis_server()).start()
    try:
        async with _two_processes(redis.url, namespace, auth_server, timeout=0.3) as (a, b, cache_a):
            token = await a.get_token()
            redis.stop()
            with caplog.at_level(logging.DEBUG, logger="keyless_m2m"):
                for _ in range(5):  # every fetch still gets a token, fetched locally
                    assert await a.invalidate(token)
                    token = await a.get_token()
            assert auth_server.token_requests == 6
            warnings = [
                r for r in caplog.records if r.levelno >= logging.WARNING and "unavailable" in r.getMessage()
            ]
            assert len(warnings) == 1
            with pytest.raises(CacheUnavailableError):
                await cache_a.get("anything")  # marked down: no network, no wait

            redis.start()  # same port, empty
            manual_clock.advance(1.1)  # past the first down-backoff (1 s)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="keyless_m2m"):
                assert await a.invalidate(token)
                shared = await a.get_token()
            assert any("reachable again" in r.getMessage() for r in caplog.records)
            assert auth_server.token_requests == 7
            assert await b.get_token() == shared  # shared again: b fetched nothing
            assert auth_server.token_requests == 7
    finally:
        redis.close()


async def test_unreachable_redis_never_blocks_the_first_fetch(auth_server: AuthorizationServer) -> None:
    cache = RedisTokenCache(f"redis://127.0.0.1:{free_port()}/0", timeout=0.3)
    async with cache, _manager(auth_server, cache) as m:
        assert (await m.get_token()).value
    assert auth_server.token_requests == 1


def test_redis_url_password_never_appears() -> None:
    cache = RedisTokenCache("redis://:hunter2-redis-password@127.0.0.1:1/0")
    assert "hunter2" not in repr(cache)
    assert "hunter2" not in cache._availability.failed("ConnectionError").args[0]


# -- many processes -------------------------------------------------------------------------


class _Workers:
    """Worker processes (tests/redis_worker.py), stopped by PID."""

    def __init__(self, config: dict[str, Any], count: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.redis_worker", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            for _ in range(count)
        ]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            line = _readline(proc, deadline)
            assert line == "ready", f"worker said {line!r}; stderr: {_stderr(proc)}"

    def go(self, proc: subprocess.Popen[str], starts: list[float]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(starts) + "\n")
        proc.stdin.flush()

    def result(self, proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
        line = _readline(proc, time.monotonic() + timeout)
        assert line.startswith("{"), f"worker said {line!r}; stderr: {_stderr(proc)}"
        return dict(json.loads(line))

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _readline(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                return proc.stdout.readline().strip()
            if proc.poll() is not None:
                return proc.stdout.readline().strip()
    raise AssertionError(f"worker {proc.pid} said nothing in time")


def _stderr(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    return (proc.stderr.read() if proc.stderr else "")[-2000:]


def _config(
    redis_server: RedisServer, auth_server: AuthorizationServer, namespace: str, **extra: Any
) -> dict[str, Any]:
    return {
        "redis_url": redis_server.url,
        "namespace": namespace,
        "token_endpoint": auth_server.token_endpoint,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "tasks": 500,
        **extra,
    }


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the workers pick their own loops
async def test_eight_processes_make_one_request_cold_and_one_at_expiry(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    auth_server.expires_in = 4  # usable 3.6 s (leeway is a tenth)
    auth_server.latency = 0.2  # the fetch is in flight while the others arrive
    workers = _Workers(_config(redis_server, auth_server, namespace), 8)
    try:
        workers.wait_ready()
        first = time.time() + 1.0
        for proc in workers.procs:
            workers.go(proc, [first, first + 5.0])
        cold = [workers.result(p) for p in workers.procs]
        assert auth_server.token_requests == 1
        expired = [workers.result(p) for p in workers.procs]
        assert auth_server.token_requests == 2
    finally:
        workers.stop()
    for phase in (cold, expired):
        assert len(phase) == len(workers.procs) > 1
        assert [r["errors"] for r in phase] == [[]] * len(phase)
        assert len({t for r in phase for t in r["tokens"]}) == 1  # everyone had the same token
    assert sum(r["requests"] for r in expired) == 2
    assert sum(r["shared_hits"] for r in expired) == 14


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_lease_holder_killed_mid_refresh(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    auth_server.latency = 30.0  # the holder's request hangs until it is killed
    workers = _Workers(_config(redis_server, auth_server, namespace, lock_ttl=1.0, cache_wait=60.0), 2)
    holder, other = workers.procs
    try:
        workers.wait_ready()
        workers.go(holder, [0.0])
        deadline = time.monotonic() + 20
        while auth_server.token_requests < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # polls a real subprocess's request, not the manager's clock
        assert auth_server.token_requests == 1
        workers.go(other, [0.0])
        time.sleep(0.1)  # a real subprocess starts waiting on the holder's lease (Redis's TTL)
        auth_server.latency = 0.0
        os.kill(holder.pid, signal.SIGKILL)
        # Well before cache_wait: the lease ran out, the other process took it over.
        result = workers.result(other, timeout=20.0)
    finally:
        workers.stop()
    assert result["errors"] == [] and len(result["tokens"]) == 1
    assert auth_server.token_requests == 2  # the dead holder's, then the other's after the TTL


# -- the documented least-privilege ACL is enough -------------------------------------------


def _documented_acl(namespace: str, password: str) -> list[str]:
    text = (ROOT / "docs" / "scaling.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ACL SETUSER keyless-m2m")]
    words = line.replace("payments-api", namespace).replace("REPLACE_WITH_A_PASSWORD", password).split()
    return words[2:]  # after "ACL SETUSER": the user name and its rules


async def test_least_privilege_acl_from_the_docs_is_enough(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    password = uuid.uuid4().hex
    rules = _documented_acl(namespace, password)
    async with RedisTokenCache(redis_server.url) as admin:
        await admin._call("execute_command", "ACL", "SETUSER", *rules)
    try:
        url = f"redis://{rules[0]}:{password}@127.0.0.1:{redis_server.port}/0"
        async with _two_processes(url, namespace, auth_server) as (a, b, cache_a):
            assert await a.get_token() == await b.get_token()
            assert b.stats.shared_hits == 1
            # ...and that user cannot touch anything outside the namespace.
            with pytest.raises(CacheUnavailableError, match="NoPermissionError"):
                await cache_a._call("get", "other-namespace:key")
    finally:
        async with RedisTokenCache(redis_server.url) as admin:
            await admin._call("execute_command", "ACL", "DELUSER", rules[0])


# -- blocking code --------------------------------------------------------------------------


def test_sync_manager_shares_through_a_blocking_redis_client(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    import threading

    import redis as redis_py

    from keyless_m2m import SyncTokenManager

    client = redis_py.Redis.from_url(redis_server.url)
    results: list[str] = []
    try:
        options: dict[str, Any] = {"scope": "pockets.read"}
        with (
            SyncTokenManager(
                auth_server.token_endpoint,
                ClientSecretBasic(CLIENT_ID, SECRET),
                cache=RedisTokenCache(client, namespace=namespace),
                **options,
            ) as one,
            SyncTokenManager(
                auth_server.token_endpoint,
                ClientSecretBasic(CLIENT_ID, SECRET),
                cache=RedisTokenCache(client, namespace=namespace),
                **options,
            ) as other,
        ):
            threads = [
                threading.Thread(target=lambda m=m: results.append(m.get_token().value))
                for m in [one, other] * 16
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        assert len(results) == 32 and len(set(results)) == 1
        assert auth_server.token_requests == 1
    finally:
        client.close()


async def test_a_lease_without_expiry_does_not_hold_a_cold_fetch(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    """A crashed writer's lease on a Redis that lost its expiry (PERSIST, a restore without
    TTLs) would never end; a cold get_token() takes it over instead of waiting cache_wait."""
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        async with _manager(auth_server, cache) as tokens:  # cache_wait: 20 s by default
            key = tokens._shared_key(tokens._default_entry)
            assert await cache.acquire(key, ttl=60) is not None
            _, lock, _, _ = cache.names(key)
            assert await cache._call("execute_command", "PERSIST", lock) == 1
            with anyio.fail_after(3):
                assert (await tokens.get_token()).value
            assert auth_server.token_requests == 1 and tokens.stats.shared_hits == 0


# -- forged entries and foreign clocks (issue 15) ------------------------------------------


def _plain_entry(key_name: str, **fields: Any) -> bytes:
    body = {
        "value": "forged-token-value",
        "token_type": "Bearer",
        "expires_at": time.time() + 3600,
        "expires_in": 3600,
        "scope": "pockets.read",
        "raw": {},
        "key": key_name,
    }
    body.update(fields)
    return b"p1." + json.dumps(body).encode()


@pytest.mark.parametrize(
    "forged",
    [
        {"value": "abc\r\nX-Injected: 1"},
        {"value": "has space"},
        {"token_type": "DPoP"},
        {"token_type": "DPoP", "dpop_jkt": "A" * 43},
        {"expires_in": 10 * 366 * 24 * 3600, "expires_at": time.time() + 10 * 366 * 24 * 3600},
        {"expires_in": float("inf")},
        {"key": "another-namespace:{0123}:tok"},
        {"key": None},
    ],
    ids=["crlf", "space", "dpop", "dpop-bound-elsewhere", "ten-years", "infinite", "other-key", "no-key"],
)
async def test_a_forged_plaintext_entry_is_not_served(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer, forged: dict[str, Any]
) -> None:
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        async with _manager(auth_server, cache) as tokens:
            tok = cache.names(tokens._shared_key(tokens._default_entry))[0]
            await cache._call("execute_command", "HSET", tok, "fence", 1, "data", _plain_entry(tok, **forged))
            await cache._call("pexpire", tok, 3_000_000)
            token = await tokens.get_token()
            assert token.value != "forged-token-value" and "X-Injected" not in token.value
            assert auth_server.token_requests == 1 and tokens.stats.shared_hits == 0


async def test_a_well_formed_plaintext_entry_is_still_adopted(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer
) -> None:
    """The control for the test above: the same entry, not forged, is served (so the
    refusals are the validation's doing, not a format the cache no longer reads)."""
    async with RedisTokenCache(redis_server.url, namespace=namespace) as cache:
        async with _manager(auth_server, cache) as tokens:
            tok = cache.names(tokens._shared_key(tokens._default_entry))[0]
            await cache._call("execute_command", "HSET", tok, "fence", 1, "data", _plain_entry(tok))
            await cache._call("pexpire", tok, 3_000_000)
            assert (await tokens.get_token()).value == "forged-token-value"
            assert auth_server.token_requests == 0


async def test_an_unencrypted_cache_says_it_is_a_trust_boundary(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    async with RedisTokenCache(redis_server.url, namespace=namespace):
        pass
    async with RedisTokenCache(redis_server.url, namespace=namespace, encryption_key=os.urandom(32)):
        pass
    warnings = [r.getMessage() for r in caplog.records if "encryption_key" in r.getMessage()]
    assert len(warnings) == 1 and "write to this Redis" in warnings[0]


async def test_a_process_with_a_wrong_wall_clock_serves_no_longer_than_the_token_lives(
    redis_server: RedisServer, namespace: str, auth_server: AuthorizationServer, manual_clock: ManualClock
) -> None:
    import keyless_m2m.manager._shared as shared_tier

    auth_server.expires_in = 20  # usable for 18 s (leeway: a tenth)
    async with _two_processes(redis_server.url, namespace, auth_server) as (a, b, cache_a):
        await a.get_token()
        # 5 s pass: on the managers' clock, and on Redis's (its key TTL, which the manual
        # clock does not move: shortened by hand).
        manual_clock.advance(5)
        tok = cache_a.names(a._shared_key(a._default_entry))[0]
        await cache_a._call("pexpire", tok, await cache_a._call("pttl", tok) - 5000)
        true_remaining = a._default_entry.current.usable_until - manual_clock.monotonic()
        # b's wall clock is an hour behind: by its clock the token was issued in the future.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shared_tier, "time", lambda: manual_clock.time() - 3600)
            await b.get_token()
        assert b.stats.shared_hits == 1 and auth_server.token_requests == 1
        served_for = b._default_entry.current.usable_until - manual_clock.monotonic()
        assert 12 < served_for <= true_remaining + 0.25
