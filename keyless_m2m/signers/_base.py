"""What every signer backend shares, so that each policy has one home:

- :class:`KeyDescription` and :class:`CachedDescriptionSigner` (describe once, check every
  signature's length);
- :class:`OnceCell`, the one "made once, whatever the number of concurrent callers" rule
  (the description, a backend's SDK clients), on asyncio and trio;
- :class:`ProviderErrors` and :func:`call_provider`, the one way a provider (SDK) failure
  becomes a typed :class:`~keyless_m2m.errors.SigningError` (``retryable``, ``code``,
  ``key``) with the SDK exception cut from the chain; each backend keeps only its table;
- :func:`run_blocking`, the one way blocking SDK calls leave the event loop (at most
  :data:`SDK_THREADS` worker threads at once per event loop, whatever the number of
  signers, outside anyio's default thread limiter), :func:`construct_blocking`, the one way
  an SDK client is built (one build at a time per event loop), :class:`SharedClients`
  (one SDK client per configuration, process-wide, reference-counted) and
  :func:`check_max_concurrency`, the one name and check of a signer's own bound;
- :func:`import_extra`, the lazy import of an optional SDK, and the deprecated-keyword rule.

It imports only ``_jose`` and ``errors``: vendor SDKs are imported in their own backend.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._jose import Algorithm, PublicKey, check_signature_length, jwk_thumbprint, jws_algorithm, public_jwk
from .._runtime import check_max_concurrency as check_max_concurrency

# The backends import these from here; their home is the leaf module.
from .._runtime import import_extra as import_extra
from .._runtime import renamed_keyword as renamed_keyword
from .._runtime import running_async_library as running_async_library
from ..errors import ConfigurationError, KeylessM2MError, SigningError

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class KeyDescription:
    """What a signer says about its key.

    ``algorithm`` is the JWS ``alg``; ``key_id`` the ``kid`` put in every assertion header
    (by default the RFC 7638 thumbprint of the public key); ``public_jwk`` the public key as a
    JWK with ``kid``, ``alg`` and ``use="sig"``, ready to register with the authorization server.
    """

    algorithm: str
    key_id: str
    public_jwk: Mapping[str, str] = field(repr=False)

    @classmethod
    def for_public_key(
        cls, public_key: PublicKey, algorithm: str, key_id: str | None = None
    ) -> KeyDescription:
        jwk = public_jwk(public_key)
        kid = key_id if key_id is not None else jwk_thumbprint(jwk)
        full = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
        return cls(algorithm=algorithm, key_id=kid, public_jwk=MappingProxyType(full))

    @property
    def jws_algorithm(self) -> Algorithm:
        return jws_algorithm(self.algorithm, key=self.key_id)


class OnceCell(Generic[_T]):
    """A value made at most once by an async call, however many tasks ask for it at once.

    >>> cell: OnceCell[KeyDescription] = OnceCell()
    >>> description = await cell.get_or_init(load_description)

    The first caller runs ``init``; callers arriving meanwhile wait and get the same value
    (1,000 concurrent callers make one provider call). A failed ``init`` leaves the cell
    empty, so the next caller tries again. The anyio lock exists only while callers
    contend: the first one makes it (inside the event loop, as anyio needs) and the last one
    to leave drops it, so one cell serves asyncio and trio, one event loop after another,
    and can be built outside any loop.
    """

    __slots__ = ("_lock", "_waiting", "value")

    def __init__(self, value: _T | None = None) -> None:
        self.value = value
        self._lock: anyio.Lock | None = None
        self._waiting = 0

    async def get_or_init(self, init: Callable[[], Awaitable[_T]]) -> _T:
        value = self.value
        if value is not None:
            return value
        if self._lock is None:
            self._lock = anyio.Lock()
        lock = self._lock
        self._waiting += 1
        try:
            async with lock:
                value = self.value
                if value is None:
                    value = self.value = await init()
                return value
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._lock = None

    def take(self) -> _T | None:
        """Empty the cell and return what it held (a client to close, say)."""
        value, self.value = self.value, None
        return value


def retryable_status(status: int | None) -> bool:
    """Whether an HTTP status from a provider is worth another try: 408, 429 and 5xx."""
    return isinstance(status, int) and (status in (408, 429) or status >= 500)


@dataclass(frozen=True, slots=True)
class ProviderErrors:
    """One backend's table of provider error codes, and the one shape of its errors.

    ``retryable`` codes are worth another try (the token endpoint, the one layer that
    retries, decides when); ``final`` ones are not; any other code is judged by the HTTP
    status, when there is one (:func:`retryable_status`). ``hints`` say what a code usually
    means, for people. The message holds the key, the code and the hint, never the
    provider's own text (it can quote credentials, tokens or request headers).
    """

    retryable: frozenset[str] = frozenset()
    final: frozenset[str] = frozenset()
    hints: Mapping[str, str] = field(default_factory=dict)

    def is_retryable(self, code: str, status: int | None = None) -> bool:
        if code in self.retryable:
            return True
        if code in self.final:
            return False
        return retryable_status(status)

    def error(
        self,
        failure: str,
        code: str,
        *,
        key: str,
        status: int | None = None,
        shown: str | None = None,
        hint: str | None = None,
    ) -> SigningError:
        """``SigningError("{failure}: {shown or code} ({hint})")`` with ``retryable``,
        ``code`` and ``key`` set; ``hint`` defaults to the table's hint for ``code``."""
        hint = self.hints.get(code) if hint is None else hint
        return SigningError(
            f"{failure}: {shown or code}" + (f" ({hint})" if hint else ""),
            retryable=self.is_retryable(code, status),
            key=key,
            code=code,
        )


async def call_provider(
    call: Callable[[], Awaitable[_T]], map_error: Callable[[Exception], KeylessM2MError | None]
) -> _T:
    """Await one provider call; raise the typed error ``map_error`` makes of its failure.

    The typed error is raised ``from None`` outside the ``except`` clause, so neither
    ``__cause__`` nor ``__context__`` holds the SDK exception, and no traceback shows it:
    SDK exceptions keep the request (an ``Authorization`` or ``X-Vault-Token`` header), the
    response text, or a proxy URL with a password. The library's own errors pass through;
    an exception ``map_error`` returns ``None`` for (a bug, not a provider failure)
    propagates unchanged.
    """
    error: KeylessM2MError
    try:
        return await call()
    except KeylessM2MError:
        raise
    except Exception as exc:
        mapped = map_error(exc)
        if mapped is None:
            raise
        error = mapped
    raise error from None


#: Worker threads that blocking SDK calls (boto3, hvac, python-pkcs11, the synchronous Azure
#: and Cloud KMS clients) use at once per event loop, across every signer, from a limiter of
#: the library's own, so that the application's ``anyio.to_thread.run_sync`` calls (anyio's
#: default limiter, 40 threads) never wait behind signers. Each signer's ``max_concurrency``
#: applies within it. Small on purpose: an SDK thread in its CPU phase (serializing, signing
#: the request, parsing the answer) holds the GIL for up to a switch interval (5 ms) before
#: the event loop gets it back, so the loop's longest wait grows with the number of such
#: threads. Measured with 50 signers against moto_server (benchmarks.goals_signers, client
#: prebuilt): the loop's longest stall was 13, 12, 21 and 44 ms with 2, 4, 8 and 16 threads,
#: all 50 signed within about the same time from 4 threads on, and 1.6x slower with 2.
SDK_THREADS = 4

_SDK_CALLS: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("keyless_m2m_sdk_calls")
_SDK_BUILDS: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("keyless_m2m_sdk_builds")


def _run_limiter(var: anyio.lowlevel.RunVar[anyio.CapacityLimiter], tokens: int) -> anyio.CapacityLimiter:
    # One per event loop (a limiter belongs to the loop that made it): asyncio and trio,
    # one loop after another, or several at once in threads (SyncTokenManager).
    try:
        return var.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(tokens)
        var.set(limiter)
        return limiter


def sdk_thread_limiter() -> anyio.CapacityLimiter:
    """The event loop's limiter of SDK worker threads (:data:`SDK_THREADS` tokens)."""
    return _run_limiter(_SDK_CALLS, SDK_THREADS)


def sdk_build_limiter() -> anyio.CapacityLimiter:
    """The event loop's limiter of SDK client builds: one at a time (a build is CPU, JSON
    models read and parsed under the GIL, so running two at once only starves the loop)."""
    return _run_limiter(_SDK_BUILDS, 1)


async def run_blocking(func: Callable[[], _T], limiter: anyio.CapacityLimiter | None = None) -> _T:
    """Run one blocking SDK call (boto3, hvac, the synchronous Azure and Cloud KMS clients)
    in a worker thread, without holding a caller that is cancelled.

    ``limiter`` is the signer's own bound (``max_concurrency``); every call also takes a
    token of :func:`sdk_thread_limiter`, so that all signers of an event loop together use
    at most :data:`SDK_THREADS` threads, none of them from anyio's default limiter.

    A cancellation (the caller's own scope, the token endpoint's deadline) releases the
    caller at once even while the SDK call hangs: the thread is abandoned, runs on until
    the SDK's own connect/read timeouts end it (every client a signer builds has finite
    ones), and its result or error is dropped. An abandoned thread no longer counts against
    either limiter.
    """
    shared = sdk_thread_limiter()
    if limiter is None:
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True, limiter=shared)
    async with limiter:
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True, limiter=shared)


async def construct_blocking(build: Callable[[], object], done: Callable[[], bool] | None = None) -> None:
    """Build an SDK client (or anything CPU-bound an SDK needs once) in a worker thread,
    one build at a time per event loop (:func:`sdk_build_limiter`), never on the loop and
    never with a token of anyio's default limiter.

    ``done`` is asked on the loop once this caller's turn comes: callers that queued
    behind the build of the client they need find it made and take no thread at all.
    """
    async with sdk_build_limiter():
        if done is not None and done():
            return
        await anyio.to_thread.run_sync(build, abandon_on_cancel=True, limiter=sdk_thread_limiter())


_K = TypeVar("_K", bound=Hashable)


class SharedClients(Generic[_K, _T]):
    """SDK clients shared process-wide by every signer of one configuration (``_K``, a
    hashable key whose ``repr`` shows no secret), reference-counted.

    :meth:`acquire` (in a worker thread) returns the key's client, building it first if
    there is none: builds run one at a time, process-wide, under a lock (SDK sessions are
    not thread-safe; their clients are). :meth:`acquire_built` is the same without a
    build, cheap enough for the event loop. Each acquisition is given back once with
    :meth:`release`; the last one closes the client and forgets it, so the next signer of
    that configuration builds a new one. ``built`` counts builds (for tests).
    """

    def __init__(self, build: Callable[[_K], _T], close: Callable[[_T], None]) -> None:
        self._build = build
        self._close = close
        self._lock = threading.Lock()  # guards _entries; never held during a build
        self._build_lock = threading.Lock()
        self._entries: dict[_K, list[Any]] = {}  # key -> [client, users]
        self.built = 0

    def acquire_built(self, key: _K) -> _T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry[1] += 1
            client: _T = entry[0]
            return client

    def acquire(self, key: _K) -> _T:
        client = self.acquire_built(key)
        if client is not None:
            return client
        with self._build_lock:
            client = self.acquire_built(key)
            if client is not None:
                return client
            client = self._build(key)
            with self._lock:
                self._entries[key] = [client, 1]
                self.built += 1
            return client

    def release(self, key: _K, client: _T) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not client:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._entries[key]
        self._close(client)

    def users(self, key: _K) -> int:
        """How many acquisitions of ``key``'s client are not yet released (0: none built)."""
        with self._lock:
            entry = self._entries.get(key)
            return 0 if entry is None else int(entry[1])


def refuse_uri_credentials(uri: str, what: str, hint: str = "") -> None:
    """Refuse ``user:password@`` in a signer URI's authority, before any part of the URI is
    shown in a message: no backend takes credentials there, and one pasted by mistake
    must not come back in this or any later error."""
    authority = re.split(r"[/?#]", uri.partition("://")[2].lstrip("/"), maxsplit=1)[0]
    if "@" in authority:
        raise ConfigurationError(f"{what} must not carry credentials{hint}")


class CachedDescriptionSigner(ABC):
    """Base for backends: ``describe()`` runs ``_load_description()`` once and caches it;
    ``sign()`` checks the signature length the backend returns.

    Users' own signers need not inherit from this: the :class:`~keyless_m2m.signers.Signer`
    protocol is all the library relies on.
    """

    _described: OnceCell[KeyDescription] | None = None

    @property
    @abstractmethod
    def key_name(self) -> str:
        """A printable name of the key (id, ARN, URL; never key material)."""

    @abstractmethod
    async def _load_description(self) -> KeyDescription:
        """Fetch the public key and decide the algorithm (called once)."""

    @abstractmethod
    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        """The raw JWS signature of ``signing_input``."""

    @property
    def _description_cell(self) -> OnceCell[KeyDescription]:
        # Made on first use: backends need not call a base __init__.
        cell = self._described
        if cell is None:
            cell = self._described = OnceCell()
        return cell

    @property
    def _description(self) -> KeyDescription | None:
        """The description once resolved (``None`` before); a backend that knows its key at
        construction (a local key) sets it."""
        return self._description_cell.value

    @_description.setter
    def _description(self, description: KeyDescription | None) -> None:
        self._description_cell.value = description

    async def describe(self) -> KeyDescription:
        return await self._description_cell.get_or_init(self._load_description)

    async def sign(self, signing_input: bytes) -> bytes:
        description = self._description or await self.describe()
        alg = description.jws_algorithm
        signature = await self._sign(alg, signing_input)
        return check_signature_length(alg, signature, key=self.key_name)

    async def aclose(self) -> None:  # noqa: B027 - most backends hold nothing to close
        """Release SDK clients the signer created (clients passed in are left open)."""

    def __repr__(self) -> str:
        alg = self._description.algorithm if self._description else "?"
        return f"{type(self).__name__}(key={self.key_name!r}, alg={alg})"


def ensure_kid(kid: Any) -> str | None:
    """A JWS key id given as ``key_id=``: ``None`` (the thumbprint) or a non-empty string."""
    if kid is None:
        return None
    if not isinstance(kid, str) or not kid:
        raise ConfigurationError("key_id must be a non-empty string")
    return kid
