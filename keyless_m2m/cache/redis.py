"""A :class:`~keyless_m2m.cache.TokenCache` in Redis: one token request per refresh for
every process and host that shares the Redis (extra ``redis``).

Per cache key, four Redis names share one hash tag (so a Redis Cluster keeps them in one
slot): ``NS:{H}:tok`` (a hash: ``fence``, ``data``; expires with the token), ``NS:{H}:lock``
(the lease, ``SET NX PX``), ``NS:{H}:fence`` (the fencing counter) and the pub/sub channel
``NS:{H}:evt``. ``H`` is a SHA-256 the manager computed: no client id, scope or secret
appears in a key name.

The lease and the write are Lua scripts, so "take the lease with a fence larger than any
stored entry's" and "write unless a newer fence wrote first" are atomic: a holder that
stalled past its lease cannot overwrite the token of the holder after it.

Under asyncio the cache uses ``redis.asyncio``; under trio (which redis-py's asyncio
client cannot run on) the blocking client in worker threads. Every call is bounded by
``timeout``; a Redis that does not answer is marked down for a while (1 s, doubling to
30 s) and the manager fetches tokens itself meanwhile: one warning when it goes down, at
most one more a minute while it stays down, one line when it is back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

import anyio

from .._runtime import check_max_concurrency, import_extra, renamed_keyword, running_async_library
from ..errors import CacheDecryptionError, CacheError, CacheUnavailableError, ConfigurationError
from ..token import AccessToken

__all__ = ["RedisTokenCache"]

logger = logging.getLogger("keyless_m2m")

_ACQUIRE = """
local fence = redis.call('INCR', KEYS[2])
local stored = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
if stored >= fence then
  fence = stored + 1
  redis.call('SET', KEYS[2], fence)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- Every lease is set with an expiry; one without (a crashed writer on a store that lost
-- it) would never end: it is taken over.
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('DEL', KEYS[1])
end
if redis.call('SET', KEYS[1], fence, 'NX', 'PX', ARGV[1]) then
  return fence
end
return 0
"""

_GET = """
return {redis.call('HGET', KEYS[1], 'data'), redis.call('PTTL', KEYS[1])}
"""

_PUT = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if stored > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'put')
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'release')
  return 1
end
return 0
"""

_FENCE_TTL_MS = 7 * 24 * 3600 * 1000  # the counter outlives any token; it is one integer
_PLAIN, _SEALED = b"p1", b"e1"


def key_id_of(key: bytes) -> str:
    """The id stored next to each encrypted entry: names the key, reveals nothing of it."""
    return hashlib.sha256(b"keyless-m2m token cache key id\x00" + key).hexdigest()[:16]


class _Codec:
    """AccessToken <-> bytes, sealed with AES-GCM when keys are given.

    The Redis key name is the associated data, so a sealed entry copied under another
    key does not open. With keys configured, plaintext entries are refused: whoever can
    write to the Redis cannot plant a token.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._sealers: dict[str, AESGCM] = {}
        self._current: str | None = None
        for key in keys:
            if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
                raise ConfigurationError("encryption keys must be 16, 24 or 32 random bytes")
            kid = key_id_of(bytes(key))
            self._sealers.setdefault(kid, AESGCM(bytes(key)))
            self._current = self._current or kid

    @property
    def encrypted(self) -> bool:
        return self._current is not None

    def encode(self, token: AccessToken, aad: bytes) -> bytes:
        body = json.dumps(
            {
                # The entry's own Redis name: an entry copied under another name (another
                # client, scope or audience) is refused, sealed or not.
                "key": aad.decode(),
                "value": token.value,
                "token_type": token.token_type,
                "expires_at": token.expires_at.timestamp(),
                "expires_in": token.expires_in,
                "scope": token.scope,
                "raw": dict(token.raw),
                "dpop_jkt": token.dpop_jkt,
            },
            separators=(",", ":"),
        ).encode()
        if self._current is None:
            return _PLAIN + b"." + body
        nonce = os.urandom(12)
        sealed = self._sealers[self._current].encrypt(nonce, body, aad)
        return b".".join((_SEALED, self._current.encode(), base64.urlsafe_b64encode(nonce + sealed)))

    def decode(self, data: bytes, aad: bytes) -> AccessToken:
        kind, _, rest = data.partition(b".")
        if kind == _PLAIN:
            if self.encrypted:
                raise CacheDecryptionError("refusing an unencrypted entry: this cache has encryption keys")
            body = rest
        elif kind == _SEALED:
            kid, _, blob = rest.partition(b".")
            sealer = self._sealers.get(kid.decode("ascii", "replace"))
            if sealer is None:
                shown = kid.decode("ascii", "replace")[:16]
                raise CacheDecryptionError(f"entry sealed with key id {shown!r}, which is not configured")
            try:
                raw = base64.urlsafe_b64decode(blob)
                body = sealer.decrypt(raw[:12], raw[12:], aad)
            except Exception:
                raise CacheDecryptionError("entry does not authenticate with its key") from None
        else:
            raise CacheError("unrecognised cache entry format")
        return _token_from_json(body, aad)


def _token_from_json(body: bytes, aad: bytes) -> AccessToken:
    try:
        fields = json.loads(body)
    except Exception:
        raise CacheError("malformed cache entry") from None
    if not isinstance(fields, dict) or fields.get("key") != aad.decode():
        raise CacheError("entry is not this key's (copied from another key, or from an old version)")
    try:
        value, token_type = fields["value"], fields["token_type"]
        expires_at, expires_in = float(fields["expires_at"]), float(fields["expires_in"])
        scope, raw = fields.get("scope"), fields.get("raw") or {}
        dpop_jkt = fields.get("dpop_jkt")
        valid = (
            isinstance(value, str)
            and value
            and isinstance(token_type, str)
            and expires_in > 0
            and (scope is None or isinstance(scope, str))
            and isinstance(raw, dict)
            and (dpop_jkt is None or isinstance(dpop_jkt, str))
        )
        if not valid:
            raise ValueError
        return AccessToken(
            value=value,
            token_type=token_type,
            expires_at=datetime.fromtimestamp(expires_at, UTC),
            scope=scope,
            raw=raw,
            expires_in=expires_in,
            dpop_jkt=dpop_jkt,
        )
    except Exception:
        raise CacheError("malformed cache entry") from None


class _Availability:
    """Down/up bookkeeping with rate-limited logs."""

    def __init__(self, where: str, first_backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        self.where = where
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self.down_until = -1.0
        self.failures = 0
        self._last_warning = -1e9

    def check(self) -> None:
        if self.failures and monotonic() < self.down_until:
            raise CacheUnavailableError(f"Redis at {self.where} is marked down; retrying it shortly")

    def failed(self, reason: str) -> CacheUnavailableError:
        self.failures += 1
        backoff = min(self.max_backoff, self.first_backoff * 2 ** (self.failures - 1))
        now = monotonic()
        self.down_until = now + backoff
        if self.failures == 1 or now - self._last_warning >= 60.0:
            self._last_warning = now
            logger.warning(
                "shared token cache: Redis at %s unavailable (%s); fetching tokens locally, "
                "next try in %.0f s",
                self.where,
                reason,
                backoff,
            )
        else:
            logger.debug("shared token cache: Redis at %s still unavailable (%s)", self.where, reason)
        return CacheUnavailableError(f"Redis at {self.where} unavailable: {reason}")

    def succeeded(self) -> None:
        if self.failures:
            logger.info(
                "shared token cache: Redis at %s is reachable again after %d failure(s)",
                self.where,
                self.failures,
            )
            self.failures = 0


class RedisTokenCache:
    """Tokens shared through Redis, with a cross-process lease and fencing tokens.

    >>> cache = RedisTokenCache("redis://cache:6379/0", namespace="payments",
    ...                         encryption_key=key)
    >>> tokens = TokenManager(token_endpoint="https://auth.example/oauth2/token",
    ...                       client_auth=auth, cache=cache)

    - ``redis``: a URL (``redis://``, ``rediss://``, ``unix://``) or a client: a
      ``redis.asyncio.Redis`` (asyncio only) or a blocking ``redis.Redis`` (run in worker
      threads; works on trio). A client passed in is not closed by :meth:`aclose`.
    - ``namespace``: prefix of every key name (default ``keyless-m2m``).
    - ``encryption_key``: ``None`` (tokens stored in clear: anyone who can read this Redis
      can use them), 16/24/32 random bytes, or a sequence of them to rotate: the first
      seals new entries, all of them open old ones. See :meth:`generate_key`.
    - ``timeout``: bound on every Redis call, seconds (default 0.5): callers never wait
      on a dead Redis longer than this before the manager fetches for itself.
    - ``poll_interval``: how often a waiter re-reads the entry if a pub/sub message was
      missed (default 0.5 s).
    - ``max_concurrency``: worker threads a blocking ``redis.Redis`` client may use at once
      (default 8), the same name as the signers' bound; ``max_threads=`` is its deprecated
      name.
    """

    def __init__(
        self,
        redis: str | Any,
        *,
        namespace: str = "keyless-m2m",
        encryption_key: bytes | Sequence[bytes] | None = None,
        timeout: float = 0.5,
        poll_interval: float = 0.5,
        max_concurrency: int | None = None,
        max_threads: int | None = None,
    ) -> None:
        self._redis_module = import_extra("redis", "redis")
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in "{} \n"):
            raise ConfigurationError("namespace must be a non-empty string without braces or spaces")
        if not (timeout > 0) or not (poll_interval > 0):
            raise ConfigurationError("timeout and poll_interval must be positive numbers of seconds")
        if encryption_key is None:
            keys: Sequence[bytes] = ()
        elif isinstance(encryption_key, bytes | bytearray):
            keys = (bytes(encryption_key),)
        else:
            keys = tuple(encryption_key)
            if not keys:
                raise ConfigurationError("encryption_key must not be an empty sequence")
        self._codec = _Codec(keys)
        if not keys:
            logger.warning(
                "RedisTokenCache without encryption_key: entries are neither encrypted nor "
                "authenticated, so anyone who can read this Redis can use your tokens and anyone "
                "who can write to this Redis can choose the token your services send; pass "
                "encryption_key= (see the threat model in docs/scaling.md)"
            )
        self.namespace = namespace
        self.timeout = timeout
        self.poll_interval = poll_interval
        concurrency = renamed_keyword(
            "max_concurrency", max_concurrency, "max_threads", max_threads, owner="RedisTokenCache"
        )
        self._limiter = anyio.CapacityLimiter(
            check_max_concurrency(8 if concurrency is None else concurrency)
        )
        self._url: str | None = None
        self._client: Any = None
        self._owns_client = False
        self._client_is_async = False
        if isinstance(redis, str):
            parts = urlsplit(redis)
            if parts.scheme not in ("redis", "rediss", "unix"):
                raise ConfigurationError("the Redis URL must start with redis://, rediss:// or unix://")
            self._url = redis
            where = (
                parts.path
                if parts.scheme == "unix"
                else f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
            )
        else:
            asyncio_redis = import_extra("redis.asyncio", "redis")
            if isinstance(redis, asyncio_redis.Redis):
                self._client_is_async = True
            elif not isinstance(redis, self._redis_module.Redis):
                raise ConfigurationError("redis must be a URL, a redis.asyncio.Redis or a redis.Redis")
            self._client = redis
            where = _describe_client(redis)
        self._availability = _Availability(where)

    @staticmethod
    def generate_key() -> bytes:
        """32 random bytes for ``encryption_key`` (store them in your secret manager)."""
        return os.urandom(32)

    @property
    def encrypted(self) -> bool:
        return self._codec.encrypted

    def __repr__(self) -> str:
        return (
            f"RedisTokenCache(at={self._availability.where!r}, namespace={self.namespace!r}, "
            f"encrypted={self.encrypted})"
        )

    # -- names ----------------------------------------------------------------------------

    def names(self, key: str) -> tuple[str, str, str, str]:
        """``(token, lock, fence, channel)`` Redis names for a manager's cache key."""
        base = f"{self.namespace}:{{{key}}}"
        return f"{base}:tok", f"{base}:lock", f"{base}:fence", f"{base}:evt"

    # -- the protocol ---------------------------------------------------------------------

    async def get(self, key: str) -> AccessToken | None:
        found = await self.get_with_ttl(key)
        return None if found is None else found[0]

    async def get_with_ttl(self, key: str) -> tuple[AccessToken, float | None] | None:
        """The stored token and how many seconds its entry has left on Redis's own clock
        (the writer set the entry to expire when the token stops being usable), so a
        reader with a wrong wall clock still knows how long the token may be served."""
        tok = self.names(key)[0]
        data, pttl = await self._call("eval", _GET, 1, tok)
        if data is None:
            return None
        try:
            token = self._codec.decode(bytes(data), tok.encode())
        except CacheError as exc:
            # Treated as a miss: the fetch that follows overwrites the entry.
            logger.warning("shared token cache: ignoring an entry (%s)", exc)
            return None
        remaining = int(pttl) / 1000 if isinstance(pttl, int) and pttl >= 0 else None
        return token, remaining

    async def put(self, key: str, token: AccessToken, *, fence: int, ttl: float) -> bool:
        tok, _, _, channel = self.names(key)
        ttl_ms = int(ttl * 1000)
        if ttl_ms <= 0:
            return False
        data = self._codec.encode(token, tok.encode())
        return bool(await self._call("eval", _PUT, 1, tok, fence, data, ttl_ms, channel))

    async def acquire(self, key: str, *, ttl: float) -> int | None:
        tok, lock, fence_key, _ = self.names(key)
        fence = await self._call(
            "eval", _ACQUIRE, 3, lock, fence_key, tok, max(1, int(ttl * 1000)), _FENCE_TTL_MS
        )
        return int(fence) or None

    async def release(self, key: str, fence: int) -> None:
        _, lock, _, channel = self.names(key)
        await self._call("eval", _RELEASE, 1, lock, fence, channel)

    async def wait(self, key: str, *, max_wait: float) -> None:
        _, lock, _, channel = self.names(key)
        timeout = max(0.0, min(max_wait, self.poll_interval))
        client = await self._connected()
        waiter = _wait_async if self._client_is_async else _wait_blocking
        await self._bounded(partial(waiter, client, channel, lock, timeout), timeout + self.timeout)

    async def __aenter__(self) -> RedisTokenCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is None or not self._owns_client:
            return
        client, self._client = self._client, None
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
            if self._client_is_async:
                await client.aclose()
            else:
                await anyio.to_thread.run_sync(client.close, limiter=self._limiter)

    # -- plumbing -------------------------------------------------------------------------

    async def _connected(self) -> Any:
        self._availability.check()
        if self._client is not None:
            if self._client_is_async and running_async_library() != "asyncio":
                raise ConfigurationError("a redis.asyncio client runs on asyncio only; pass a redis.Redis")
            return self._client
        assert self._url is not None
        options = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
        if running_async_library() == "asyncio":
            asyncio_redis = import_extra("redis.asyncio", "redis")
            self._client = asyncio_redis.from_url(self._url, **options)
            self._client_is_async = True
        else:
            self._client = self._redis_module.Redis.from_url(self._url, **options)
            self._client_is_async = False
        self._owns_client = True
        return self._client

    async def _call(self, method: str, *args: Any) -> Any:
        client = await self._connected()
        return await self._bounded(partial(getattr(client, method), *args), self.timeout)

    async def _bounded(self, call: Callable[[], Any], seconds: float) -> Any:
        """Run ``call`` on the client (awaited, or in a worker thread for a blocking client)
        within ``seconds``; a failure marks Redis down and becomes a CacheUnavailableError."""
        try:
            with anyio.fail_after(seconds):
                if self._client_is_async:
                    result = await call()
                else:
                    result = await anyio.to_thread.run_sync(
                        call, limiter=self._limiter, abandon_on_cancel=True
                    )
        except self._redis_module.ResponseError as exc:
            # NOPERM, OOM, READONLY...: keep the error's name, not the rest of its text.
            code = type(exc).__name__
            if type(exc) is self._redis_module.ResponseError:
                code = str(exc).split(" ", 1)[0][:40]
            raise self._availability.failed(f"Redis answered {code}") from None
        except (TimeoutError, OSError, self._redis_module.RedisError) as exc:
            raise self._availability.failed(type(exc).__name__) from None
        self._availability.succeeded()
        return result


async def _wait_async(client: Any, channel: str, lock: str, seconds: float) -> None:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        # Subscribed first, then checked: a release between the two still wakes us.
        if not await client.exists(lock):
            return
        deadline = monotonic() + seconds
        while (remaining := deadline - monotonic()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message.get("type") == "message":
                return
    finally:
        with anyio.CancelScope(shield=True):
            await pubsub.aclose()


def _wait_blocking(client: Any, channel: str, lock: str, seconds: float) -> None:
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        if not client.exists(lock):
            return
        deadline = monotonic() + seconds
        while (remaining := deadline - monotonic()) > 0:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is not None and message.get("type") == "message":
                return
    finally:
        pubsub.close()


def _describe_client(client: Any) -> str:
    """host:port of a client's pool, for messages (never the password)."""
    try:
        kwargs = client.connection_pool.connection_kwargs
    except AttributeError:
        return "redis"
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
