"""Token caches shared beyond one :class:`~keyless_m2m.TokenManager`.

A manager always keeps its own in-memory entries: that is the hot path, and a fresh
token is served from there without touching any cache below. A :class:`TokenCache` is the
second tier, consulted only when the manager would otherwise fetch a token (a miss, the
refresh window, an invalidation). It lets several managers share one token and one token
request per refresh:

- :class:`MemoryTokenCache`: managers in one process (one event loop);
- :class:`RedisTokenCache`: processes and hosts sharing a Redis (extra ``redis``).

>>> from keyless_m2m.cache import RedisTokenCache
>>> tokens = TokenManager(token_endpoint="https://auth.example/oauth2/token", client_auth=auth,
...                       cache=RedisTokenCache("redis://cache:6379/0"))

The protocol is small so that other stores (memcached, a database) can implement it; the
manager drives the algorithm (read, lock with a fencing token, fetch, write, release),
see ``docs/scaling.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..token import AccessToken
from .memory import MemoryTokenCache

if TYPE_CHECKING:
    from .redis import RedisTokenCache

__all__ = ["MemoryTokenCache", "RedisTokenCache", "TokenCache"]


@runtime_checkable
class TokenCache(Protocol):
    """A store of access tokens with a lease per key, shared by several managers.

    ``key`` is an opaque, already hashed name chosen by the manager (it covers the token
    endpoint, client id, scope set, resources and audience; it never holds a secret).
    Methods may raise :class:`~keyless_m2m.errors.CacheError`; the manager then fetches
    the token itself, so a broken cache costs sharing, never tokens.
    """

    async def get(self, key: str) -> AccessToken | None:
        """The stored token, or ``None`` (missing, expired, unreadable)."""
        ...

    async def put(self, key: str, token: AccessToken, *, fence: int, ttl: float) -> bool:
        """Store ``token`` for ``ttl`` seconds unless an entry written under a newer fencing
        token is there; return whether it was stored. Wakes :meth:`wait`-ers."""
        ...

    async def acquire(self, key: str, *, ttl: float) -> int | None:
        """Take the lease on ``key`` for ``ttl`` seconds: a fencing token larger than any
        before it for this key, or ``None`` when someone else holds the lease."""
        ...

    async def release(self, key: str, fence: int) -> None:
        """Give the lease back if it is still ``fence``'s. Wakes :meth:`wait`-ers."""
        ...

    async def wait(self, key: str, *, max_wait: float) -> None:
        """Return when ``key`` may have changed (a put or a release), when nobody holds its
        lease, or after at most ``max_wait`` seconds, whichever is first."""
        ...

    async def aclose(self) -> None:
        """Release connections the cache opened (clients passed in are left open)."""
        ...


def __getattr__(name: str) -> Any:
    # RedisTokenCache imports redis-py only when asked for.
    if name == "RedisTokenCache":
        from .redis import RedisTokenCache

        return RedisTokenCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
