"""The shared tier: many managers (processes, hosts) making one token request per refresh
through a :class:`~keyless_m2m.cache.TokenCache`.

A fetch reads the shared cache; else takes the entry's lease (a fencing token), reads
again, fetches, writes and releases; else waits for whoever holds the lease, at most
``cache_wait`` and at most half of what is left of the deadline, then fetches itself. A
broken cache only costs the sharing (the manager fetches itself); an adopted entry obeys
the rules of a token response, or it is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from time import monotonic, time
from typing import TYPE_CHECKING

import anyio

from .. import _telemetry
from ..errors import CacheError
from ..token import AccessToken, token_problem
from ._timing import Timing

if TYPE_CHECKING:
    from ..cache import TokenCache
    from ._entries import Entry

__all__ = ["SharedTier"]

logger = logging.getLogger("keyless_m2m")

Fetch = Callable[["Entry"], Awaitable[tuple[AccessToken, float]]]


async def read_shared(cache: TokenCache, key: str) -> tuple[AccessToken, float | None] | None:
    """A shared entry and the seconds it has left on the store's clock (``None`` when the
    store cannot say: a :class:`~keyless_m2m.cache.TokenCache` need only have ``get``)."""
    get_with_ttl = getattr(cache, "get_with_ttl", None)
    if get_with_ttl is not None:
        found: tuple[AccessToken, float | None] | None = await get_with_ttl(key)
        return found
    token = await cache.get(key)
    return None if token is None else (token, None)


class SharedTier:
    def __init__(
        self,
        cache: TokenCache,
        *,
        lock_ttl: float,
        wait: float,
        timing: Timing,
        identity: Callable[[], tuple[str, object]],
        extra_params: Mapping[str, str],
        binding: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.cache = cache
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.timing = timing
        self.hits = 0
        # The client: (token endpoint URL, client id), read when first needed (discovery
        # may set the URL), and the extra form parameters every request carries.
        self._identity = identity
        self._binding = binding  # the DPoP key's thumbprint, or None
        self._extra = sorted(extra_params.items())

    async def obtain(self, entry: Entry, fetch: Fetch, give_up: float) -> tuple[AccessToken, float]:
        try:
            return await self._obtain(entry, fetch, give_up)
        except CacheError as exc:
            # The cache is only an optimisation: fetch here (the cache logs its outages).
            logger.debug("shared token cache not used for this fetch: %s", exc)
            return await fetch(entry)

    async def _obtain(self, entry: Entry, fetch: Fetch, give_up: float) -> tuple[AccessToken, float]:
        cache = self.cache
        key = self.key(entry)
        now = monotonic()
        stop_waiting = now + min(self.wait, max(0.0, give_up - now) / 2)
        while True:
            adopted = self.adopt(entry, await read_shared(cache, key))
            if adopted is not None:
                return adopted
            fence = await cache.acquire(key, ttl=self.lock_ttl)
            if fence is not None:
                break
            remaining = stop_waiting - monotonic()
            if remaining <= 0:
                logger.warning(
                    "waited %.1f s for another process's token fetch (its lease is still held); "
                    "fetching here",
                    monotonic() - now,
                )
                return await fetch(entry)
            waited = monotonic()
            await cache.wait(key, max_wait=remaining)
            _telemetry.shared_wait(waited)
        try:
            # Someone may have written between our read and our lease.
            adopted = self.adopt(entry, await read_shared(cache, key))
            if adopted is not None:
                return adopted
            token, issued = await fetch(entry)
            ttl = issued + self.timing.deadlines(token.expires_in)[1] - monotonic()
            try:
                if not await cache.put(key, token, fence=fence, ttl=ttl):
                    logger.debug("a newer fetch already stored a token in the shared cache")
            except CacheError as exc:
                logger.debug("could not store the token in the shared cache: %s", exc)
            return token, issued
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.lock_ttl):
                try:
                    await cache.release(key, fence)
                except CacheError as exc:  # the lease runs out by itself
                    logger.debug("could not release the shared cache lease: %s", exc)

    def adopt(
        self, entry: Entry, found: tuple[AccessToken, float | None] | None
    ) -> tuple[AccessToken, float] | None:
        """A token from the shared cache, with its issue time on our monotonic clock, when it
        is outside its refresh window (else it is what we are here to replace).

        A shared entry is a token response too, written by whoever can write to the store:
        it obeys the rules a token response obeys (header-safe value, Bearer, a lifetime of
        at most a year), or it is ignored. Its age comes from the time its entry has left on
        the store's own clock when the store says (Redis does), so a process whose wall
        clock is off serves it no longer than the writer would; otherwise from its issue
        time by our wall clock.
        """
        if found is None:
            return None
        token, remaining = found
        if entry.rejected is not None and token == entry.rejected:
            return None
        problem = token_problem(token)
        if problem is None and token.dpop_jkt is not None and token.dpop_jkt != self._binding():
            problem = "a DPoP token bound to a key this client does not hold"
        if problem is not None:
            logger.warning("shared token cache: ignoring an entry (%s)", problem)
            return None
        refresh_after, usable = self.timing.deadlines(token.expires_in)
        if remaining is not None:
            age = max(0.0, usable - remaining)
        else:
            age = max(0.0, time() - (token.expires_at.timestamp() - token.expires_in))
        if age >= refresh_after:
            return None
        self.hits += 1
        return token, monotonic() - age

    def key(self, entry: Entry) -> str:
        """The entry's name in the shared cache (a hash: it covers the client, never a
        secret), computed on first use."""
        if entry.shared_key is not None:
            return entry.shared_key
        scope, resources, audience = entry.key
        url, client_id = self._identity()
        named: list[object] = [url, client_id, sorted(scope), list(resources), audience, self._extra]
        jkt = self._binding()
        if jkt is not None:
            named.append({"dpop_jkt": jkt})
        identity = json.dumps(named)
        entry.shared_key = hashlib.sha256(identity.encode()).hexdigest()[:40]
        return entry.shared_key
