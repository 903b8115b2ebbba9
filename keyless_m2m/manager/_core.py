"""The token manager: many token requests over time, for many callers.

Semantics (each is a test on asyncio and trio):

- one cache entry per (scope set, resources, audience); ``"a b"`` and ``"b a"`` are one
  entry; at most ``max_entries`` entries besides the default one, least recently used
  evicted first (:mod:`._entries`);
- hot path: a fresh cached token is returned without a lock, an ``await`` or a task
  switch; a caller joining a flight waits in ``get_token``'s own frame (one coroutine
  frame per waiter);
- single flight: at most one token request per entry is in flight, whatever the number
  of waiters (:mod:`._flight`);
- proactive refresh: inside the refresh window the manager refreshes in its own task
  group (when used as ``async with``) while callers keep getting the still-valid token;
  outside one, inline, and a cancelled leader hands the flight to a waiter;
- failure: a failed flight fails its waiters once; callers in the backoff window that
  follows get the same error without a new request, while a still-valid token keeps being
  served (with a warning logged) (:mod:`._timing`);
- ``invalidate(token)`` drops the entry only if it still holds that token, at most once
  per ``min_invalidation_interval``;
- shared tier: with ``cache=`` (a :class:`~keyless_m2m.cache.TokenCache`), a fetch first
  reads the shared cache, then takes its lease, so managers in many processes make one
  token request per refresh between them (:mod:`._shared`);
- lifecycle: exceptions leave ``async with`` as themselves; after ``aclose()``, after
  ``os.fork()`` (in the child) and from a second event loop, a fetch fails at once with a
  typed error.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .. import _telemetry
from ..bearer import BearerSource
from ..client_auth import ClientAuth
from ..dpop import is_valid_nonce
from ..endpoint import TokenEndpoint
from ..errors import (
    ConfigurationError,
    KeylessM2MError,
    ManagerClosedError,
    SigningError,
    TransportError,
)
from ..source import ResourceArg, ScopeArg
from ..stats import TokenStats
from ..token import AccessToken
from ._entries import EMPTY, Current, Entry, EntryKey, EntryTable
from ._flight import Flight, fresh_copy
from ._shared import SharedTier
from ._timing import Timing, seconds

if TYPE_CHECKING:
    from ..cache import TokenCache

__all__ = ["TokenManager"]

logger = logging.getLogger("keyless_m2m")

# The endpoint enforces its deadline itself; this is the backstop around the whole fetch.
_DEADLINE_GRACE = 1.0

# The constructor's own keywords: from_issuer() keeps these for the manager and gives the
# rest to the endpoint (a test checks this list against the signature).
MANAGER_OPTIONS: Final = frozenset(
    {
        "scope",
        "resource",
        "audience",
        "extra_params",
        "refresh_window",
        "expiry_leeway",
        "failure_backoff",
        "max_failure_backoff",
        "max_entries",
        "cache",
        "cache_lock_ttl",
        "cache_wait",
        "min_invalidation_interval",
    }
)

# Every live manager, so that a forked child can mark them unusable (see _after_fork).
_LIVE: weakref.WeakSet[TokenManager] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A manager copied into a forked child shares its parent's sockets, event-loop objects
    # and (for SyncTokenManager) a portal thread that does not exist here: nothing in it
    # can be used safely. Forget its tokens so the next call takes the slow path, which
    # raises ManagerClosedError at once instead of hanging or reusing a parent's socket.
    for manager in list(_LIVE):
        manager._forked = True
        for entry in manager._table.all():
            entry.current = EMPTY
            entry.flight = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_error(kind: str) -> ManagerClosedError:
    """What a manager copied into a forked child raises on its first call there."""
    return ManagerClosedError(
        f"this {kind} was created before os.fork() and cannot be used in the child process "
        "(it shares the parent's connections and event loop); create the manager in each "
        "worker process instead (e.g. gunicorn post_fork, Celery worker_process_init, or "
        "lazily on first use)"
    )


@dataclass(slots=True)
class _Counters:
    """The manager's own counters (the endpoint counts requests and signatures)."""

    failures: int = 0
    waits: int = 0
    refreshes: int = 0
    served_stale: int = 0
    handovers: int = 0
    ignored_invalidations: int = 0


class TokenManager(BearerSource):
    """Gets, caches and refreshes client-credentials tokens.

    >>> async with TokenManager(token_endpoint="https://auth.example/oauth2/token",
    ...                         client_auth=PrivateKeyJWT("my-client", signer),
    ...                         scope="pockets.read") as tokens:
    ...     token = await tokens.get_token()

    Use it as ``async with`` so refreshes run in the background; outside a context it
    still works, refreshing inline (the caller that finds the token in its refresh window
    fetches the next one while everyone else keeps the current one).

    Timing options: ``refresh_window`` — start refreshing this many seconds before a token
    stops being usable (default: a quarter of its lifetime, at most 300 s);
    ``expiry_leeway`` — treat a token as expired this long before the server's
    ``expires_in`` says (default: a tenth of its lifetime, at most 10 s);
    ``failure_backoff`` / ``max_failure_backoff`` — after a failed fetch, new fetches for
    that entry wait 1 s, 2 s, 4 s ... up to 60 s (jittered); ``min_invalidation_interval``
    — at most one invalidation-driven refresh per entry in this time (10 s).
    ``max_entries`` bounds the cache (128, besides the default entry).

    Sharing: ``cache`` — a :class:`~keyless_m2m.cache.TokenCache`
    (:class:`~keyless_m2m.cache.RedisTokenCache` across processes,
    :class:`~keyless_m2m.cache.MemoryTokenCache` across managers in one process) read
    before every fetch; ``cache_lock_ttl`` — the lease a fetching manager holds on it
    (10 s; a holder that dies releases it by expiry); ``cache_wait`` — how long a
    manager waits for another's fetch before fetching itself (default twice the lease, at
    most half the deadline). Other keyword options go to
    :class:`~keyless_m2m.endpoint.TokenEndpoint` (``http_client``, ``timeout``,
    ``verify``, ``max_attempts``, ``deadline``, ``allow_insecure_http``,
    ``default_expires_in``...).
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
        if endpoint is None:
            if token_endpoint is None or client_auth is None:
                raise ConfigurationError("TokenManager needs token_endpoint= and client_auth=")
            endpoint = TokenEndpoint(token_endpoint, client_auth, **endpoint_options)
        else:
            if endpoint_options:
                raise ConfigurationError("pass endpoint options to the TokenEndpoint you give")
            if not isinstance(endpoint, TokenEndpoint):
                raise ConfigurationError("endpoint must be a TokenEndpoint")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError("max_entries must be an integer of at least 1")
        if not seconds(cache_lock_ttl, zero_ok=False) or (
            cache_wait is not None and not seconds(cache_wait, zero_ok=True)
        ):
            raise ConfigurationError("cache_lock_ttl must be positive and cache_wait non-negative seconds")
        if extra_params is not None and not isinstance(extra_params, Mapping):
            raise ConfigurationError("extra_params must be a mapping of form field names to values")
        self.timing = Timing(
            refresh_window=refresh_window,
            expiry_leeway=expiry_leeway,
            failure_backoff=failure_backoff,
            max_failure_backoff=max_failure_backoff,
            min_invalidation_interval=min_invalidation_interval,
        )
        self.endpoint = endpoint
        self.cache = cache
        self.cache_lock_ttl = cache_lock_ttl
        self.cache_wait = 2 * cache_lock_ttl if cache_wait is None else cache_wait
        self._extra_params = dict(extra_params or {})
        self._table = EntryTable(scope, resource, audience, max_entries=max_entries)
        self._default_entry = self._table.default
        self._shared: SharedTier | None = None
        if cache is not None:
            self._shared = SharedTier(
                cache,
                lock_ttl=self.cache_lock_ttl,
                wait=self.cache_wait,
                timing=self.timing,
                identity=self._shared_identity,
                # A DPoP-bound token only for the holder of its key: the key's thumbprint
                # names the entry, and an entry bound to another key is never adopted.
                binding=lambda: self.endpoint.dpop.jkt if self.endpoint.dpop is not None else None,
                extra_params=self._extra_params,
            )
        self._counts = _Counters()
        self._task_group: TaskGroup | None = None
        # Cancel scopes of running flights (background and inline): aclose() cancels them.
        self._running: set[anyio.CancelScope] = set()
        self._closed = False
        self._forked = False
        self._loop: object | None = None  # the event loop this manager fetches on
        self._warned_invalidation = -math.inf
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"TokenManager(endpoint={self.endpoint.url!r}, client_auth={self.endpoint.client_auth!r})"

    @classmethod
    def from_issuer(cls, issuer: str, client_auth: ClientAuth, **options: Any) -> Self:
        """A manager whose token endpoint comes from ``issuer``'s metadata (RFC 8414, then
        OpenID Connect Discovery; see :mod:`keyless_m2m.discovery`).

        >>> async with TokenManager.from_issuer("https://auth.example", auth,
        ...                                     scope="pockets.read") as tokens:
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
        from ..discovery import DiscoveredTokenEndpoint

        manager_options = {name: options.pop(name) for name in list(options) if name in MANAGER_OPTIONS}
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
            entry = self._table.get(scope, resource, audience)
        current = entry.current
        if monotonic() < current.refresh_at:
            return current.token
        flight = entry.flight
        if flight is not None and monotonic() >= current.usable_until:
            # A cold caller joining a flight waits here, in this one frame: tens of
            # thousands of waiters in a stampede each hold one coroutine frame of ours,
            # not two (the garbage collector walks every frame of every parked task).
            self._check_usable()
            self._counts.waits += 1
            await flight.done.wait()
            if not flight.abandoned:
                return flight.result()
            # Its leader was cancelled: the slow path takes the flight over.
        return await self._slow_path(entry)

    # -- what tests, the sync facade and benchmarks look at --------------------------------

    @property
    def stats(self) -> TokenStats:
        """A snapshot of the counters (see :class:`~keyless_m2m.stats.TokenStats`)."""
        sent = self.endpoint.stats
        return TokenStats(
            requests=sent.requests,
            signatures=sent.signatures,
            dpop_proofs=self.endpoint.dpop.proofs if self.endpoint.dpop is not None else 0,
            shared_hits=self._shared.hits if self._shared is not None else 0,
            evictions=self._table.evictions,
            **asdict(self._counts),
        )

    @property
    def max_entries(self) -> int:
        return self._table.max_entries

    @property
    def _entries(self) -> OrderedDict[EntryKey, Entry]:
        return self._table.entries

    def _peek(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> Entry | None:
        return self._table.peek(scope, resource, audience)

    def _shared_identity(self) -> tuple[str, object]:
        """The client, as the shared cache names it: the token endpoint URL and the client
        id, with the TLS client certificate's thumbprint when one is presented (a
        certificate-bound token is only for the holder of that certificate)."""
        endpoint = self.endpoint
        client_id = getattr(endpoint.client_auth, "client_id", None)
        certificate = endpoint.client_certificate
        if certificate is None:
            return endpoint.url, client_id
        return endpoint.url, [client_id, {"x5t#S256": certificate.thumbprint}]

    def _shared_key(self, entry: Entry) -> str:
        if self._shared is None:
            raise ConfigurationError("this TokenManager has no shared cache")
        return self._shared.key(entry)

    # -- fetching -------------------------------------------------------------------------

    async def _slow_path(self, entry: Entry) -> AccessToken:
        self._check_usable()
        while True:
            now = monotonic()
            token = entry.usable(now)
            if token is not None:
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
                            raise fresh_copy(flight.error)
                elif entry.error is not None:
                    self._counts.served_stale += 1
                return token
            waiting = entry.flight
            if waiting is None:
                if entry.error is not None and now < entry.retry_at:
                    raise fresh_copy(entry.error)
                waiting = self._start(entry)
                if self._task_group is None:
                    await self._run_inline(entry, waiting)
                    return waiting.result()
            self._counts.waits += 1
            await waiting.done.wait()
            if not waiting.abandoned:
                return waiting.result()
            # Its leader was cancelled: take the flight over (or join whoever did first).
            self._check_usable()

    def _check_usable(self) -> None:
        """Fail fast where a fetch cannot work: closed, forked, or another event loop."""
        if self._closed:
            raise ManagerClosedError("this TokenManager is closed")
        if self._forked:
            raise forked_error("TokenManager")
        loop = anyio.lowlevel.current_token().native_token
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise ConfigurationError(
                "this TokenManager is bound to the event loop it first fetched a token on, and "
                "another event loop is using it; create one TokenManager per event loop (or use "
                "SyncTokenManager from threads)"
            )

    def _start(self, entry: Entry) -> Flight:
        flight = Flight()
        entry.flight = flight
        self._counts.refreshes += 1
        if self._task_group is not None:
            self._task_group.start_soon(self._run_background, entry, flight)
        return flight

    async def _run_background(self, entry: Entry, flight: Flight) -> None:
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

    async def _run_inline(self, entry: Entry, flight: Flight) -> None:
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

    async def _run_flight(self, entry: Entry, flight: Flight) -> None:
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
                    self._counts.handovers += 1
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

    async def _request(self, entry: Entry) -> tuple[AccessToken, float]:
        """One fetch at the token endpoint: the token and when (monotonic) it was issued."""
        started = monotonic()
        token = await self.endpoint.request(
            scope=entry.scope,
            resource=entry.key[1],
            audience=entry.key[2],
            extra_params=self._extra_params,
        )
        return token, started

    async def _obtain(self, entry: Entry) -> tuple[AccessToken, float]:
        # Observed by the telemetry hooks when an integration installed them (a no-op
        # otherwise); the cache-hit path above never reaches here.
        return await _telemetry.observe_fetch(
            lambda: self._fetch_info(entry), lambda: self._obtain_within_deadline(entry), self._sent
        )

    def _fetch_info(self, entry: Entry) -> _telemetry.FetchInfo:
        current = entry.current
        return _telemetry.FetchInfo(
            url=self.endpoint.url,
            auth_method=self.endpoint.client_auth.method,
            scope=entry.scope,
            background=self._task_group is not None,
            refresh_lag=monotonic() - current.refresh_at if current is not EMPTY else None,
            shared_cache=self._shared is not None,
        )

    def _sent(self) -> int:
        return self.endpoint.stats.requests

    async def _obtain_within_deadline(self, entry: Entry) -> tuple[AccessToken, float]:
        """The whole fetch (shared-cache read and wait, discovery, signing, every attempt
        and backoff) inside one cancel scope: the endpoint's ``deadline`` is a bound."""
        deadline = float(self.endpoint.deadline)
        give_up = monotonic() + deadline
        with anyio.move_on_after(deadline + _DEADLINE_GRACE):
            if self.endpoint.dpop is not None:
                await self.endpoint.dpop.thumbprint()  # the binding is part of the shared key
            if self._shared is None:
                return await self._request(entry)
            return await self._shared.obtain(entry, self._request, give_up)
        raise TransportError(f"no token within the deadline of {deadline:g} s", reason="deadline")

    def _store(self, entry: Entry, token: AccessToken, issued: float) -> None:
        refresh_after, usable = self.timing.deadlines(token.expires_in)
        if not entry.evicted:  # an evicted entry's waiters take the token from the flight
            entry.current = Current(token, issued + refresh_after, issued + usable)
        entry.error = None
        entry.failures = 0
        entry.retry_at = -math.inf

    def _failed(self, entry: Entry, flight: Flight, error: KeylessM2MError) -> None:
        self._counts.failures += 1
        entry.failures += 1
        delay = self.timing.failure_delay(entry.failures)
        entry.error = error
        entry.retry_at = monotonic() + delay
        flight.error = error
        # One line per outage streak doubling (1st, 2nd, 4th, 8th... failure), not a flood.
        level = logging.WARNING if entry.failures & (entry.failures - 1) == 0 else logging.DEBUG
        now = monotonic()
        if entry.usable(now) is not None:
            logger.log(
                level,
                "token refresh failed %d time(s) (%s: %s); serving the current token, usable for %.0f s more",
                entry.failures,
                type(error).__name__,
                error,
                entry.current.usable_until - now,
            )
        elif not error.retryable:
            # No attempt is scheduled: the error needs a fix (the credentials, the
            # registration). Calls within the pause get it again without a request.
            logger.log(
                level,
                "token fetch failed %d time(s) (%s: %s); not retryable: calls in the next %.1f s "
                "get the same error, later ones ask the server again",
                entry.failures,
                type(error).__name__,
                error,
                delay,
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

    # -- DPoP (RFC 9449) -------------------------------------------------------------------

    async def dpop_proof(self, method: str, url: str, token: AccessToken) -> str | None:
        """The ``DPoP`` header for one ``method`` request to ``url`` that carries ``token``
        (``ath`` and the nonce the server at ``url`` last gave); ``None`` for a Bearer token.
        ``tokens.auth()`` calls it for every request; one signature each."""
        if not token.is_dpop:
            return None
        dpop = self.endpoint.dpop
        if dpop is None or token.dpop_jkt != await dpop.thumbprint():
            raise ConfigurationError("this DPoP token is bound to a key this TokenManager does not hold")
        return (await dpop.proof(method, url, access_token=token.value)).reveal()

    def remember_dpop_nonce(self, url: str, nonce: str) -> bool:
        """Keep the ``DPoP-Nonce`` a resource server at ``url`` sent (RFC 9449 section 9)
        for the next proofs to its origin; whether it was a valid nonce and kept."""
        dpop = self.endpoint.dpop
        if dpop is None or not is_valid_nonce(nonce):
            return False
        dpop.remember_nonce(url, nonce)
        return True

    # -- invalidation ---------------------------------------------------------------------

    async def invalidate(self, token: AccessToken) -> bool:
        """Drop ``token`` if an entry still holds it (the API said it is no good).

        Returns whether anything was dropped: N concurrent 401s for one token cause one
        invalidation and, through single flight, one refresh. An entry whose previous
        token was invalidated less than ``min_invalidation_interval`` seconds ago (10 s)
        keeps its token (``stats.ignored_invalidations``): an API that rejects every token
        would otherwise cost a token request and a KMS signature per API call.
        """
        for entry in self._table.all():
            if not entry.current.holds(token):
                continue
            now = monotonic()
            floor = self.timing.min_invalidation_interval
            if now - entry.invalidated_at < floor:
                self._counts.ignored_invalidations += 1
                if now - self._warned_invalidation >= 60.0:
                    self._warned_invalidation = now
                    logger.warning(
                        "the API rejected a token issued after the previous rejection; not "
                        "refreshing again within min_invalidation_interval=%g s (is the API "
                        "configured for this client, scope and audience?)",
                        floor,
                    )
                return False
            entry.invalidated_at = now
            entry.current = EMPTY
            entry.rejected = token
            return True
        return False

    # auth() (the httpx auth over this manager) is inherited from bearer.BearerSource.

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._check_usable()
        if self._task_group is not None:
            raise ConfigurationError("this TokenManager is already entered")
        # The HTTP client and its TLS setup, in a worker thread, before any caller waits
        # on the first fetch (nothing for an http_client= you passed).
        await self.endpoint.prepare()
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
        for entry in self._table.all():
            entry.current = EMPTY
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
