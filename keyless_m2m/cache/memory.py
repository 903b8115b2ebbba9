"""An in-process :class:`~keyless_m2m.cache.TokenCache`: several token managers in one
process (one event loop) share tokens and one fetch per refresh."""

from __future__ import annotations

from collections import OrderedDict
from time import monotonic

import anyio

from ..errors import ConfigurationError
from ..token import AccessToken

__all__ = ["MemoryTokenCache"]


class MemoryTokenCache:
    """Tokens, leases and fencing tokens in a dict.

    Useful when one process builds several managers for one client (a manager per tenant
    router, per request scope, per worker task) and they should share what they fetch. It
    holds at most ``max_entries`` tokens, least recently used evicted first. All managers
    using it must run on the same event loop.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ConfigurationError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._tokens: OrderedDict[str, tuple[AccessToken, int, float]] = OrderedDict()
        self._leases: dict[str, tuple[int, float]] = {}
        self._fences: dict[str, int] = {}
        self._changed: dict[str, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"MemoryTokenCache(entries={len(self._tokens)}, max_entries={self.max_entries})"

    async def get(self, key: str) -> AccessToken | None:
        stored = self._tokens.get(key)
        if stored is None:
            return None
        if monotonic() >= stored[2]:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return stored[0]

    async def put(self, key: str, token: AccessToken, *, fence: int, ttl: float) -> bool:
        stored = self._tokens.get(key)
        if stored is not None and stored[1] > fence:
            return False
        if ttl > 0:
            self._tokens[key] = (token, fence, monotonic() + ttl)
            self._tokens.move_to_end(key)
            while len(self._tokens) > self.max_entries:
                self._tokens.popitem(last=False)
        self._notify(key)
        return True

    async def acquire(self, key: str, *, ttl: float) -> int | None:
        lease = self._leases.get(key)
        if lease is not None and monotonic() < lease[1]:
            return None
        stored = self._tokens.get(key)
        fence = max(self._fences.get(key, 0), stored[1] if stored else 0) + 1
        self._fences[key] = fence
        self._leases[key] = (fence, monotonic() + ttl)
        return fence

    async def release(self, key: str, fence: int) -> None:
        lease = self._leases.get(key)
        if lease is not None and lease[0] == fence:
            del self._leases[key]
            self._notify(key)

    async def wait(self, key: str, *, max_wait: float) -> None:
        lease = self._leases.get(key)
        if lease is None or monotonic() >= lease[1]:
            return
        event = self._changed.get(key)
        if event is None:
            event = self._changed[key] = anyio.Event()
        # A lease that runs out wakes nobody: never sleep past it.
        with anyio.move_on_after(max(0.0, min(max_wait, lease[1] - monotonic()))):
            await event.wait()

    async def aclose(self) -> None:
        self._tokens.clear()

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
