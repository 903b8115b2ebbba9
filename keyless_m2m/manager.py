"""The token manager: cache, single flight, background refresh.

Semantics (each is a test on asyncio and trio):

- one cache entry per (scope set, resources, audience); ``"a b"`` and ``"b a"`` are one
  entry; at most ``max_entries`` entries, least recently used evicted first;
- hot path: a fresh cached token is returned without a lock, an ``await`` or a task
  switch;
- single flight: at most one token request per entry is in flight, whatever the number
  of waiters;
- proactive refresh: inside the refresh window the manager refreshes in its own task
  group (when used as ``async with``) while callers keep getting the still-valid token;
- failure: a failed flight fails its waiters once; callers in the backoff window that
  follows get the same error without a new request, while a still-valid token keeps being
  served (with a warning logged);
- cancellation: a cancelled waiter never cancels the flight; a cancelled leader never
  strands the others;
- ``invalidate(token)`` drops the entry only if it still holds that token;
- shared tier: with ``cache=`` (a :class:`~keyless_m2m.cache.TokenCache`), a fetch first
  reads the shared cache, then takes its lease, so managers in many processes make one
  token request per refresh between them; a broken cache only costs the sharing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .client_auth import ClientAuth
from .endpoint import TokenEndpoint, TokenStats
from .errors import (
    CacheError,
    ConfigurationError,
    KeylessM2MError,
    ManagerClosedError,
    SigningError,
    TransportError,
)
from .token import AccessToken, token_problem

if TYPE_CHECKING:
    from .cache import TokenCache
    from .integrations.httpx import BearerFlow

__all__ = ["TokenManager", "TokenStats"]

logger = logging.getLogger("keyless_m2m")

ScopeArg = str | Iterable[str] | None
ResourceArg = str | Sequence[str] | None
EntryKey = tuple[frozenset[str], tuple[str, ...], str | None]

_NO_TOKEN: tuple[Any, float, float] = (None, -math.inf, -math.inf)
# The endpoint enforces its deadline itself; this is the backstop around the whole fetch.
_DEADLINE_GRACE = 1.0


class _Flight:
    """One token fetch, shared by everyone waiting for it.

    ``abandoned``: its leader was cancelled before it ended (a flight run inline, outside
    ``async with``); a waiter then starts the next one.
    """

    __slots__ = ("abandoned", "done", "error", "token")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.token: AccessToken | None = None
        self.error: KeylessM2MError | None = None
        self.abandoned = False


class _Entry:
    __slots__ = (
        "current",
        "error",
        "evicted",
        "failures",
        "flight",
        "invalidated_at",
        "key",
        "rejected",
        "retry_at",
        "scope",
        "shared_key",
    )

    def __init__(self, key: EntryKey) -> None:
        self.key = key
        self.scope = " ".join(sorted(key[0])) or None
        # (token, refresh_at, usable_until) swapped as one object, so a reader in another
        # thread (SyncTokenManager's fast path) never sees a token with another's deadline.
        self.current: tuple[AccessToken | None, float, float] = _NO_TOKEN
        self.flight: _Flight | None = None
        self.error: KeylessM2MError | None = None
        self.retry_at = -math.inf
        self.failures = 0
        # The shared cache's name for this entry (computed on first use) and the last
        # token invalidated here, which must not come back from the shared cache.
        self.shared_key: str | None = None
        self.rejected: AccessToken | None = None
        # Dropped from the table to keep it within max_entries: whoever still holds the
        # entry (a waiter, a lookup alias) gets a new one on its next call.
        self.evicted = False
        self.invalidated_at = -math.inf  # monotonic time of the last invalidate() honoured


def _fresh_copy(error: KeylessM2MError) -> KeylessM2MError:
    """A copy of a shared error for one waiter (raising one instance in thousands of tasks
    would grow its traceback without bound)."""
    clone = copy.copy(error)
    clone.__cause__ = error.__cause__
    clone.__suppress_context__ = True
    return clone


# Every live manager, so that a forked child can mark them unusable (see _after_fork).
_LIVE: weakref.WeakSet[TokenManager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A manager copied into a forked child shares its parent's sockets, event-loop objects
    # and (for SyncTokenManager) a portal thread that does not exist here: nothing in it
    # can be used safely. Forget its tokens so the next call takes the slow path, which
    # raises ManagerClosedError at once instead of hanging or reusing a parent's socket.
    for manager in list(_LIVE):
        manager._forked = True
        for entry in manager._all_entries():
            entry.current = _NO_TOKEN
            entry.flight = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _seconds(value: Any, *, zero_ok: bool) -> bool:
    """Whether ``value`` is a finite number of seconds (positive, or also zero)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value >= 0 if zero_ok else value > 0)


async def _read_shared(cache: TokenCache, key: str) -> tuple[AccessToken, float | None] | None:
    """A shared entry and the seconds it has left on the store's clock (``None`` when the
    store cannot say: a :class:`~keyless_m2m.cache.TokenCache` need only have ``get``)."""
    get_with_ttl = getattr(cache, "get_with_ttl", None)
    if get_with_ttl is not None:
        found: tuple[AccessToken, float | None] | None = await get_with_ttl(key)
        return found
    token = await cache.get(key)
    return None if token is None else (token, None)


def normalize_scope(scope: ScopeArg) -> frozenset[str]:
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    try:
        items = list(scope)
    except TypeError:
        raise ConfigurationError("scope must be a string or an iterable of strings") from None
    if not all(isinstance(s, str) for s in items):
        raise ConfigurationError("scope must be a string or an iterable of strings")
    return frozenset(w for s in items for w in s.split())


def _normalize_resource(resource: ResourceArg) -> tuple[str, ...]:
    if resource is None:
        return ()
    if isinstance(resource, str):
        return (resource,)
    try:
        items = tuple(resource)
    except TypeError:
        raise ConfigurationError("resource must be a URI string or a sequence of them") from None
    if not all(isinstance(r, str) and r for r in items):
        raise ConfigurationError("resource must be a URI string or a sequence of them")
    return tuple(sorted(set(items)))


class TokenManager:
    """Gets, caches and refreshes client-credentials tokens.

    >>> async with TokenManager(token_endpoint="https://auth.example/oauth2/token",
    ...                         client_auth=PrivateKeyJWT("my-client", signer),
    ...                         scope="pockets.read") as tokens:          # doctest: +SKIP
    ...     token = await tokens.get_token()

    Use it as ``async with`` so refreshes run in the background; outside a context it
    still works, refreshing inline (the caller that finds the token in its refresh window
    fetches the next one while everyone else keeps the current one).

    Timing options: ``refresh_window`` — start refreshing this many seconds before a token
    stops being usable (default: a quarter of its lifetime, at most 300 s);
    ``expiry_leeway`` — treat a token as expired this long before the server's
    ``expires_in`` says (default: a tenth of its lifetime, at most 10 s);
    ``failure_backoff`` / ``max_failure_backoff`` — after a failed fetch, new fetches for
    that entry wait 1 s, 2 s, 4 s ... up to 60 s (jittered). ``max_entries`` bounds the
    cache (128).

    Sharing: ``cache`` — a :class:`~keyless_m2m.cache.TokenCache`
    (:class:`~keyless_m2m.cache.RedisTokenCache` across processes,
    :class:`~keyless_m2m.cache.MemoryTokenCache` across managers in one process) read
    before every fetch; ``cache_lock_ttl`` — the lease a fetching manager holds on it
    (10 s; a holder that dies releases it by expiry); ``cache_wait`` — how long a
    manager waits for another's fetch before fetching itself (default twice the lease).
    Other keyword options go to :class:`~keyless_m2m.endpoint.TokenEndpoint`
    (``http_client``, ``timeout``, ``verify``, ``max_attempts``, ``deadline``,
    ``allow_insecure_http``, ``default_expires_in``...).
    """

    def __init__(
        self,
        token_endpoint: str | None = None,
        client_auth: ClientAuth | None = None,
        *,
        scope: ScopeArg = None,
        resource: ResourceArg = None,
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        endpoint: TokenEndpoint | None = None,
        refresh_window: float | None = None,
        expiry_leeway: float | None = None,
        failure_backoff: float = 1.0,
        max_failure_backoff: float = 60.0,
        max_entries: int = 128,
        cache: TokenCache | None = None,
        cache_lock_ttl: float = 10.0,
        cache_wait: float | None = None,
        min_invalidation_interval: float = 10.0,
        **endpoint_options: Any,
    ) -> None:
        self.stats = TokenStats()
        if endpoint is None:
            if token_endpoint is None or client_auth is None:
                raise ConfigurationError("TokenManager needs token_endpoint= and client_auth=")
            endpoint = TokenEndpoint(token_endpoint, client_auth, stats=self.stats, **endpoint_options)
        else:
            if endpoint_options:
                raise ConfigurationError("pass endpoint options to the TokenEndpoint you give")
            if not isinstance(endpoint, TokenEndpoint):
                raise ConfigurationError("endpoint must be a TokenEndpoint")
            endpoint.stats = self.stats
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError("max_entries must be an integer of at least 1")
        for name, value in (("refresh_window", refresh_window), ("expiry_leeway", expiry_leeway)):
            if value is not None and not _seconds(value, zero_ok=True):
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")
        for name, value in (
            ("failure_backoff", failure_backoff),
            ("max_failure_backoff", max_failure_backoff),
        ):
            if not _seconds(value, zero_ok=True):
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")
        if not _seconds(cache_lock_ttl, zero_ok=False) or (
            cache_wait is not None and not _seconds(cache_wait, zero_ok=True)
        ):
            raise ConfigurationError("cache_lock_ttl must be positive and cache_wait non-negative seconds")
        if not _seconds(min_invalidation_interval, zero_ok=True):
            raise ConfigurationError("min_invalidation_interval must be a non-negative number of seconds")
        if extra_params is not None and not isinstance(extra_params, Mapping):
            raise ConfigurationError("extra_params must be a mapping of form field names to values")
        self.cache = cache
        self.cache_lock_ttl = cache_lock_ttl
        self.cache_wait = 2 * cache_lock_ttl if cache_wait is None else cache_wait
        self.endpoint = endpoint
        self.refresh_window = refresh_window
        self.expiry_leeway = expiry_leeway
        self.failure_backoff = failure_backoff
        self.max_failure_backoff = max_failure_backoff
        self.max_entries = max_entries
        self.min_invalidation_interval = min_invalidation_interval
        self._extra_params = dict(extra_params or {})
        self._default_args: tuple[ScopeArg, ResourceArg, str | None] = (scope, resource, audience)
        # The default entry lives outside the table and never counts against max_entries.
        self._entries: OrderedDict[EntryKey, _Entry] = OrderedDict()
        self._lookup: dict[tuple[Any, Any, Any], _Entry] = {}
        self._default_entry = _Entry(self._entry_key(scope, resource, audience))
        self._task_group: TaskGroup | None = None
        # Cancel scopes of running flights (background and inline): aclose() cancels them.
        self._running: set[anyio.CancelScope] = set()
        self._closed = False
        self._forked = False
        self._loop: object | None = None  # the event loop this manager fetches on
        self._warned_eviction = False
        self._warned_invalidation = -math.inf
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"TokenManager(endpoint={self.endpoint.url!r}, client_auth={self.endpoint.client_auth!r})"

    @classmethod
    def from_issuer(cls, issuer: str, client_auth: ClientAuth, **options: Any) -> Self:
        """A manager whose token endpoint comes from ``issuer``'s metadata (RFC 8414, then
        OpenID Connect Discovery; see :mod:`keyless_m2m.discovery`).

        >>> async with TokenManager.from_issuer("https://auth.example", auth,
        ...                                     scope="pockets.read") as tokens:  # doctest: +SKIP
        ...     token = await tokens.get_token()

        Synchronous and offline, like the constructor, so it reads the same way. Before
        the first token request (once, inside the single flight) the metadata is fetched
        or taken from the cache, its ``issuer`` compared with ``issuer``, and the client's
        method and signing algorithm checked against what the server supports; a problem
        there is a :class:`~keyless_m2m.DiscoveryError` from ``get_token()``. To fail at
        start-up instead, ``await tokens.endpoint.discover()``. ``options`` are the
        constructor's (``scope=``, ``refresh_window=``...) and the endpoint's
        (``timeout=``, ``allow_insecure_http=``, ``metadata_max_age=``...).
        """
        import inspect

        from .discovery import DiscoveredTokenEndpoint

        # The constructor's own keywords stay with the manager, the rest configure the
        # endpoint; read from the signature so the two lists cannot drift apart.
        own = set(inspect.signature(cls.__init__).parameters) - {
            "self",
            "token_endpoint",
            "client_auth",
            "endpoint",
            "endpoint_options",
        }
        manager_options = {name: options.pop(name) for name in list(options) if name in own}
        endpoint = DiscoveredTokenEndpoint(issuer, client_auth, **options)
        return cls(endpoint=endpoint, **manager_options)

    # -- the hot path -------------------------------------------------------------------

    async def get_token(
        self,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> AccessToken:
        """A valid access token for ``scope`` (default: the manager's scope).

        Returns at once when a fresh token is cached; otherwise joins (or starts) the one
        fetch for this entry. Raises a :class:`~keyless_m2m.KeylessM2MError` subclass.
        """
        if scope is None and resource is None and audience is None:
            entry = self._default_entry
        else:
            entry = self._entry(scope, resource, audience)
        current = entry.current
        if monotonic() < current[1]:
            return current[0]  # type: ignore[return-value]
        return await self._slow_path(entry)

    # -- entries --------------------------------------------------------------------------

    def _entry(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> _Entry:
        raw: tuple[Any, Any, Any] | None = (scope, resource, audience)
        try:
            entry = self._lookup.get(raw)  # type: ignore[arg-type]
        except TypeError:  # unhashable spelling (a list of scopes): normalise every time
            entry = None
            raw = None
        if entry is not None and not entry.evicted:
            if entry is not self._default_entry:
                self._entries.move_to_end(entry.key)
            return entry
        entry = self._make_entry(self._entry_key(scope, resource, audience))
        if raw is not None:
            if len(self._lookup) >= 8 * self.max_entries:
                self._lookup.clear()  # aliases of evicted entries: bounded, then forgotten
            self._lookup[raw] = entry
        return entry

    def _peek(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> _Entry | None:
        """Look an entry up without changing anything (safe from another thread)."""
        if scope is None and resource is None and audience is None:
            return self._default_entry
        try:
            return self._lookup.get((scope, resource, audience))
        except TypeError:
            return None

    def _entry_key(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> EntryKey:
        default_scope, default_resource, default_audience = self._default_args
        if audience is not None and not isinstance(audience, str):
            raise ConfigurationError("audience must be a string")
        return (
            normalize_scope(default_scope if scope is None else scope),
            _normalize_resource(default_resource if resource is None else resource),
            default_audience if audience is None else audience,
        )

    def _make_entry(self, key: EntryKey) -> _Entry:
        default = self._default_entry
        if key == default.key:
            return default
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = _Entry(key)
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            # Least recently used first; never the entry just made (it is the newest). An
            # evicted entry's waiters still get their flight's token; the next call for its
            # key makes a new entry.
            _, evicted = self._entries.popitem(last=False)
            self._evicted(evicted)
        return entry

    def _evicted(self, entry: _Entry) -> None:
        token, _, usable_until = entry.current
        entry.evicted = True
        entry.current = _NO_TOKEN
        if token is None or monotonic() >= usable_until:
            return
        self.stats.evictions += 1
        if not self._warned_eviction:
            self._warned_eviction = True
            logger.warning(
                "evicted a still-valid token to stay within max_entries=%d; more scope sets, "
                "resources or audiences are in use than the cache holds, so tokens are fetched "
                "again (raise max_entries; stats.evictions counts these)",
                self.max_entries,
            )

    def _all_entries(self) -> list[_Entry]:
        return [self._default_entry, *self._entries.values()]

    # -- fetching -------------------------------------------------------------------------

    async def _slow_path(self, entry: _Entry) -> AccessToken:
        self._check_usable()
        while True:
            now = monotonic()
            token, _refresh_at, usable_until = entry.current
            if token is not None and now < usable_until:
                # Refresh window: keep serving the valid token; refresh once, in the background.
                if entry.flight is None and now >= entry.retry_at:
                    flight = self._start(entry)
                    if self._task_group is None:
                        # Bare mode: this caller fetches the next token itself (inline);
                        # everyone else keeps the current one meanwhile.
                        await self._run_inline(entry, flight)
                        if flight.token is not None:
                            return flight.token
                        if isinstance(flight.error, ManagerClosedError):
                            raise _fresh_copy(flight.error)
                elif entry.error is not None:
                    self.stats.served_stale += 1
                return token
            waiting = entry.flight
            if waiting is None:
                if entry.error is not None and now < entry.retry_at:
                    raise _fresh_copy(entry.error)
                waiting = self._start(entry)
                if self._task_group is None:
                    await self._run_inline(entry, waiting)
                    return self._result(waiting)
            self.stats.waits += 1
            await waiting.done.wait()
            if not waiting.abandoned:
                return self._result(waiting)
            # Its leader was cancelled: take the flight over (or join whoever did first).
            self._check_usable()

    def _check_usable(self) -> None:
        """Fail fast where a fetch cannot work: closed, forked, or another event loop."""
        if self._closed:
            raise ManagerClosedError("this TokenManager is closed")
        if self._forked:
            raise ManagerClosedError(
                "this TokenManager was created before os.fork() and cannot be used in the child "
                "process (it shares the parent's connections and event loop); create the "
                "manager in each worker process instead (e.g. gunicorn post_fork, Celery "
                "worker_process_init, or lazily on first use)"
            )
        loop = anyio.lowlevel.current_token().native_token
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ConfigurationError(
                "this TokenManager is bound to the event loop it first fetched a token on, and "
                "another event loop is using it; create one TokenManager per event loop (or use "
                "SyncTokenManager from threads)"
            )

    @staticmethod
    def _result(flight: _Flight) -> AccessToken:
        if flight.token is not None:
            return flight.token
        assert flight.error is not None
        raise _fresh_copy(flight.error)

    def _start(self, entry: _Entry) -> _Flight:
        flight = _Flight()
        entry.flight = flight
        self.stats.refreshes += 1
        if self._task_group is not None:
            self._task_group.start_soon(self._run_background, entry, flight)
        return flight

    async def _run_background(self, entry: _Entry, flight: _Flight) -> None:
        # Each flight gets its own cancel scope: aclose() cancels these, never the task
        # group's scope, which also covers the body of the caller's ``async with``.
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                await self._run_flight(entry, flight)
            except Exception:
                # A bug here, not a failed fetch (those are recorded in the flight): say so,
                # but never fail the task group, which would wrap the caller's exception.
                logger.exception("keyless-m2m: unexpected error in a background token fetch")
            finally:
                self._running.discard(scope)

    async def _run_inline(self, entry: _Entry, flight: _Flight) -> None:
        # Without a task group the leader runs the flight in its own task, unshielded: a
        # cancelled leader is released at once and the flight is marked abandoned, so a
        # waiter starts the next one (a handover; see docs/token-manager.md). aclose()
        # cancels the scope below, which ends the flight with ManagerClosedError.
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                await self._run_flight(entry, flight)
            finally:
                self._running.discard(scope)

    async def _run_flight(self, entry: _Entry, flight: _Flight) -> None:
        try:
            token, issued = await self._obtain(entry)
        except KeylessM2MError as exc:
            failure: KeylessM2MError = exc
            if self._closed:
                failure = ManagerClosedError("the TokenManager was closed during a token fetch")
            self._failed(entry, flight, failure)
        except anyio.get_cancelled_exc_class():
            if flight.error is None and flight.token is None:
                if self._closed:
                    flight.error = ManagerClosedError("the TokenManager was closed during a token fetch")
                else:
                    flight.abandoned = True
                    self.stats.handovers += 1
            raise
        except Exception as exc:
            # A user-supplied signer or client auth raised something of its own (the
            # endpoint turns everything from HTTP and the response into a KeylessM2MError).
            # Its text and traceback may hold anything (a key, a vault token): keep only its
            # type. A signer that raises a KeylessM2MError subclass chooses its own message.
            error = SigningError(
                f"client authentication failed: the signer or client auth raised {type(exc).__name__} "
                "(its message is not shown: it may hold secrets; raise a KeylessM2MError to choose one)"
            )
            error.__suppress_context__ = True
            self._failed(entry, flight, error)
        else:
            if self._closed:
                # Closed while it ran: nothing fetched after aclose() is stored or served.
                flight.error = ManagerClosedError("the TokenManager was closed during a token fetch")
            else:
                self._store(entry, token, issued)
                flight.token = token
        finally:
            if entry.flight is flight:
                entry.flight = None
            flight.done.set()

    async def _request(self, entry: _Entry) -> tuple[AccessToken, float]:
        """One fetch at the token endpoint: the token and when (monotonic) it was issued."""
        started = monotonic()
        token = await self.endpoint.request(
            scope=entry.scope,
            resource=entry.key[1],
            audience=entry.key[2],
            extra_params=self._extra_params,
        )
        return token, started

    async def _obtain(self, entry: _Entry) -> tuple[AccessToken, float]:
        """The whole fetch (shared-cache read and wait, discovery, signing, every attempt
        and backoff) inside one cancel scope: the endpoint's ``deadline`` is a bound."""
        deadline = float(self.endpoint.deadline)
        give_up = monotonic() + deadline
        with anyio.move_on_after(deadline + _DEADLINE_GRACE):
            return await self._obtain_within(entry, give_up)
        raise TransportError(f"no token within the deadline of {deadline:g} s", reason="deadline")

    async def _obtain_within(self, entry: _Entry, give_up: float) -> tuple[AccessToken, float]:
        cache = self.cache
        if cache is None:
            return await self._request(entry)
        try:
            return await self._obtain_shared(cache, entry, give_up)
        except CacheError as exc:
            # The cache is only an optimisation: fetch here (the cache logs its outages).
            logger.debug("shared token cache not used for this fetch: %s", exc)
            return await self._request(entry)

    async def _obtain_shared(
        self, cache: TokenCache, entry: _Entry, give_up: float
    ) -> tuple[AccessToken, float]:
        """Read the shared cache; else take its lease, fetch, write, release; else wait for
        whoever holds the lease, at most ``cache_wait`` and at most half of what is left of
        the deadline (a lease that never ends, from a crashed writer on a store that lost
        its expiry, costs that much once per fetch, then this manager fetches itself)."""
        key = self._shared_key(entry)
        now = monotonic()
        stop_waiting = now + min(self.cache_wait, max(0.0, give_up - now) / 2)
        while True:
            adopted = self._adopt(entry, await _read_shared(cache, key))
            if adopted is not None:
                return adopted
            fence = await cache.acquire(key, ttl=self.cache_lock_ttl)
            if fence is not None:
                break
            remaining = stop_waiting - monotonic()
            if remaining <= 0:
                logger.warning(
                    "waited %.1f s for another process's token fetch (its lease is still held); "
                    "fetching here",
                    monotonic() - now,
                )
                return await self._request(entry)
            await cache.wait(key, max_wait=remaining)
        try:
            # Someone may have written between our read and our lease.
            adopted = self._adopt(entry, await _read_shared(cache, key))
            if adopted is not None:
                return adopted
            token, issued = await self._request(entry)
            ttl = issued + self._deadlines(token.expires_in)[1] - monotonic()
            try:
                if not await cache.put(key, token, fence=fence, ttl=ttl):
                    logger.debug("a newer fetch already stored a token in the shared cache")
            except CacheError as exc:
                logger.debug("could not store the token in the shared cache: %s", exc)
            return token, issued
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.cache_lock_ttl):
                try:
                    await cache.release(key, fence)
                except CacheError as exc:  # the lease runs out by itself
                    logger.debug("could not release the shared cache lease: %s", exc)

    def _adopt(
        self, entry: _Entry, found: tuple[AccessToken, float | None] | None
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
        if problem is not None:
            logger.warning("shared token cache: ignoring an entry (%s)", problem)
            return None
        refresh_after, usable = self._deadlines(token.expires_in)
        if remaining is not None:
            age = max(0.0, usable - remaining)
        else:
            age = max(0.0, time.time() - (token.expires_at.timestamp() - token.expires_in))
        if age >= refresh_after:
            return None
        self.stats.shared_hits += 1
        return token, monotonic() - age

    def _shared_key(self, entry: _Entry) -> str:
        """The entry's name in the shared cache (a hash: it covers the client, never a
        secret), computed on first use."""
        if entry.shared_key is not None:
            return entry.shared_key
        scope, resources, audience = entry.key
        identity = json.dumps(
            [
                self.endpoint.url,
                getattr(self.endpoint.client_auth, "client_id", None),
                sorted(scope),
                list(resources),
                audience,
                sorted(self._extra_params.items()),
            ]
        )
        entry.shared_key = hashlib.sha256(identity.encode()).hexdigest()[:40]
        return entry.shared_key

    def _deadlines(self, lifetime: float) -> tuple[float, float]:
        """Seconds after issue when a token enters its refresh window, and when it stops
        being usable."""
        leeway = self.expiry_leeway if self.expiry_leeway is not None else min(10.0, lifetime / 10)
        usable = max(0.0, lifetime - leeway)
        window = self.refresh_window if self.refresh_window is not None else min(300.0, lifetime / 4)
        return min(usable, max(0.0, usable - window)), usable

    def _store(self, entry: _Entry, token: AccessToken, issued: float) -> None:
        refresh_after, usable = self._deadlines(token.expires_in)
        if not entry.evicted:  # an evicted entry's waiters take the token from the flight
            entry.current = (token, issued + refresh_after, issued + usable)
        entry.error = None
        entry.failures = 0
        entry.retry_at = -math.inf

    def _failed(self, entry: _Entry, flight: _Flight, error: KeylessM2MError) -> None:
        self.stats.failures += 1
        entry.failures += 1
        delay = min(self.max_failure_backoff, self.failure_backoff * 2 ** (entry.failures - 1))
        delay *= random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not crypto
        entry.error = error
        entry.retry_at = monotonic() + delay
        flight.error = error
        # One line per outage streak doubling (1st, 2nd, 4th, 8th... failure), not a flood.
        level = logging.WARNING if entry.failures & (entry.failures - 1) == 0 else logging.DEBUG
        token, _, usable_until = entry.current
        if token is not None and monotonic() < usable_until:
            logger.log(
                level,
                "token refresh failed %d time(s) (%s: %s); serving the current token, usable for %.0f s more",
                entry.failures,
                type(error).__name__,
                error,
                usable_until - monotonic(),
            )
        else:
            logger.log(
                level,
                "token fetch failed %d time(s) (%s: %s); next attempt in %.1f s",
                entry.failures,
                type(error).__name__,
                error,
                delay,
            )

    # -- invalidation ---------------------------------------------------------------------

    async def invalidate(self, token: AccessToken) -> bool:
        """Drop ``token`` if an entry still holds it (the API said it is no good).

        Returns whether anything was dropped: N concurrent 401s for one token cause one
        invalidation and, through single flight, one refresh. An entry whose previous
        token was invalidated less than ``min_invalidation_interval`` seconds ago (10 s)
        keeps its token (``stats.ignored_invalidations``): an API that rejects every token
        would otherwise cost a token request and a KMS signature per API call.
        """
        for entry in self._all_entries():
            current = entry.current[0]
            if current is token or (current is not None and current == token):
                now = monotonic()
                if now - entry.invalidated_at < self.min_invalidation_interval:
                    self.stats.ignored_invalidations += 1
                    if now - self._warned_invalidation >= 60.0:
                        self._warned_invalidation = now
                        logger.warning(
                            "the API rejected a token issued after the previous rejection; not "
                            "refreshing again within min_invalidation_interval=%g s (is the API "
                            "configured for this client, scope and audience?)",
                            self.min_invalidation_interval,
                        )
                    return False
                entry.invalidated_at = now
                entry.current = _NO_TOKEN
                entry.rejected = token
                return True
        return False

    # -- httpx ----------------------------------------------------------------------------

    def auth(
        self,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
        library: str = "httpx",
    ) -> BearerFlow:
        """An ``httpx.Auth`` adding ``Authorization: Bearer`` and retrying once after a 401
        ``invalid_token``: ``httpx.AsyncClient(auth=tokens.auth())``."""
        from .integrations.httpx import bearer_auth_class

        return bearer_auth_class(library)(self, scope=scope, resource=resource, audience=audience)

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._check_usable()
        if self._task_group is not None:
            raise ConfigurationError("this TokenManager is already entered")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        self._shutdown()
        try:
            if task_group is not None:
                # Let cancelled background flights unwind before their HTTP client closes.
                # The body's exception is NOT handed to the task group: it would come out
                # wrapped in an ExceptionGroup. Background flights never raise (they
                # record their outcome in the flight), so the group has nothing to add and
                # whatever left the body leaves the ``async with`` as itself.
                await task_group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self.endpoint.aclose()

    async def aclose(self) -> None:
        """Stop background refreshes, wake waiters with ``ManagerClosedError``, close the
        HTTP client the manager created. Idempotent. Inside ``async with`` the HTTP client
        is closed on exit, once background work has stopped."""
        self._shutdown()
        if self._task_group is None:
            await self.endpoint.aclose()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for entry in self._all_entries():
            entry.current = _NO_TOKEN
            flight = entry.flight
            if flight is not None and flight.token is None:
                flight.error = flight.error or ManagerClosedError("the TokenManager was closed")
                flight.done.set()
        for scope in list(self._running):
            scope.cancel()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def token_endpoint(self) -> str:
        return self.endpoint.url
