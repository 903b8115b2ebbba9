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
    holds at most ``max_entries`` tokens, least recently used evicted first, and at most
    as many leases and wake-up events: all of its state is bounded, whatever the number of
    keys seen. Fencing tokens come from one counter for the whole cache, so they increase
    per key without remembering any key. All managers using it must run on the same event
    loop.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError("max_entries must be an integer of at least 1")
        self.max_entries = max_entries
        self._tokens: OrderedDict[str, tuple[AccessToken, int, float]] = OrderedDict()
        self._leases: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._fence = 0
        self._changed: dict[str, anyio.Event] = {}

    def __repr__(self) -> str:
        return f"MemoryTokenCache(entries={len(self._tokens)}, max_entries={self.max_entries})"

    async def get(self, key: str) -> AccessToken | None:
        found = await self.get_with_ttl(key)
        return None if found is None else found[0]

    async def get_with_ttl(self, key: str) -> tuple[AccessToken, float | None] | None:
        """The stored token and the seconds its entry has left."""
        stored = self._tokens.get(key)
        if stored is None:
            return None
        remaining = stored[2] - monotonic()
        if remaining <= 0:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return stored[0], remaining

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
        now = monotonic()
        lease = self._leases.get(key)
        if lease is not None and now < lease[1]:
            return None
        self._fence += 1
        self._leases[key] = (self._fence, now + ttl)
        self._leases.move_to_end(key)
        while len(self._leases) > self.max_entries:
            # The oldest lease goes first; expired ones are the usual victims. A live one
            # dropped here only costs sharing (two managers may fetch), never a token.
            stale, _ = self._leases.popitem(last=False)
            self._notify(stale)
        return self._fence

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
        try:
            # A lease that runs out wakes nobody: never sleep past it.
            with anyio.move_on_after(max(0.0, min(max_wait, lease[1] - monotonic()))):
                await event.wait()
        finally:
            # Nobody will set an event whose key has no live lease: forget it (other
            # waiters for the key hold their own reference).
            current = self._leases.get(key)
            if (current is None or monotonic() >= current[1]) and self._changed.get(key) is event:
                del self._changed[key]

    async def aclose(self) -> None:
        self._tokens.clear()
        self._leases.clear()
        for key in list(self._changed):
            self._notify(key)

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()
