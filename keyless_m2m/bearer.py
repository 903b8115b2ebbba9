"""``httpx.Auth`` for a token manager: bearer header, one retry after ``invalid_token``;
for DPoP-bound tokens (RFC 9449) the ``DPoP`` scheme and a fresh proof per request.

>>> async with httpx.AsyncClient(auth=tokens.auth()) as http:
...     await http.get("https://api.example/v2/pockets/")
<Response [200 OK]>

When the API answers 401 with ``WWW-Authenticate: Bearer error="invalid_token"``, the
token that was sent is invalidated (only if it is still the cached one, so a burst of 401s
causes one refresh) and the request is sent once more with the next token. A request
whose body is a stream that cannot be replayed is not retried: its 401 is returned.

A DPoP token goes as ``Authorization: DPoP <token>`` with a ``DPoP`` proof made for that
request (``htm``, ``htu``, ``ath``; one signature by the manager's DPoP key). A
``DPoP-Nonce`` the API sends is kept for its origin; a 401 whose DPoP challenge says
``error="use_dpop_nonce"`` is answered once more, at once, with a proof carrying the new
nonce (RFC 9449 section 9).

The flow is written once (:class:`BearerFlow`) against the request/response interface
that httpx and its fork ``httpx2`` share; :class:`BearerAuth` binds it to ``httpx.Auth``
and :func:`bearer_auth_class` to the ``Auth`` base of any such module
(``tokens.auth(library="httpx2")``). The other HTTP clients' integrations
(:mod:`keyless_m2m.integrations.requests`, :mod:`keyless_m2m.integrations.aiohttp`) drive
the same generators over thin views of their messages in that interface: the request's
``method``, ``url``, mutable ``headers`` and ``content`` (raising when the body cannot be
sent twice), the response's ``status_code``, ``headers.get`` / ``headers.get_list`` and
``read()`` / ``aread()``. The challenge parsing and every replay decision stay here.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import AsyncGenerator, Generator
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import httpx

from .source import ResourceArg, ScopeArg, SyncTokenSource, TokenSource
from .token import DPOP

if TYPE_CHECKING:
    from .token import AccessToken

__all__ = [
    "BearerAuth",
    "BearerFlow",
    "BearerSource",
    "NotReplayableError",
    "answer_needed",
    "bearer_auth_class",
    "is_async_source",
    "is_dpop_nonce_challenge",
    "is_invalid_token_challenge",
]

_INVALID_TOKEN = re.compile(r'(?:^|[\s,])error\s*=\s*"?invalid_token"?(?:[\s,]|$)', re.IGNORECASE)
_USE_DPOP_NONCE = re.compile(r'(?:^|[\s,])error\s*=\s*"?use_dpop_nonce"?(?:[\s,]|$)', re.IGNORECASE)


def _challenged(response: Any, schemes: tuple[str, ...], error: re.Pattern[str]) -> bool:
    if response.status_code != 401:
        return False
    for challenge in response.headers.get_list("www-authenticate"):
        scheme, _, params = challenge.strip().partition(" ")
        if scheme.lower() in schemes and error.search(params):
            return True
    return False


def is_invalid_token_challenge(response: Any) -> bool:
    """A 401 whose Bearer (or DPoP) challenge says ``error="invalid_token"`` (RFC 6750
    section 3.1, RFC 9449 section 7.1)."""
    return _challenged(response, ("bearer", "dpop"), _INVALID_TOKEN)


def is_dpop_nonce_challenge(response: Any) -> bool:
    """A 401 whose DPoP challenge says ``error="use_dpop_nonce"`` (RFC 9449 section 9)."""
    return _challenged(response, ("dpop",), _USE_DPOP_NONCE)


def answer_needed(status_code: int, proof_sent: bool) -> bool:
    """Whether a flow that sent its first attempt has a step for this answer: a DPoP
    request reads every answer's nonce; a Bearer one looks only at a 401 (its challenge).
    An adapter whose hook costs per answer (requests) may skip handing the rest over."""
    return proof_sent or status_code == 401


class NotReplayableError(Exception):
    """What the ``content`` of an integration's request view raises when the body cannot
    be sent a second time (a stream, a file), as httpx raises ``RequestNotRead``."""


def _replayable(request: Any) -> bool:
    try:
        request.content  # noqa: B018 - raises when the body is an unread stream
    except Exception:  # httpx.RequestNotRead (or a fork's), NotReplayableError
        return False
    return True


def _authorize(request: Any, token: AccessToken, proof: str | None = None) -> Any:
    """The request with ``token`` (and ``proof``) set, for a second attempt: a proof an
    earlier attempt carried is removed when this one has none."""
    if proof is None:
        request.headers["Authorization"] = f"Bearer {token.value}"
        request.headers.pop("DPoP", None)
    else:
        request.headers["Authorization"] = f"DPoP {token.value}"
        request.headers["DPoP"] = proof
    return request


def _nonce_of(response: Any) -> str | None:
    nonce = response.headers.get("dpop-nonce")
    return nonce if isinstance(nonce, str) else None


def is_async_source(source: object) -> bool:
    """Whether ``source`` hands out tokens to async code (a :class:`TokenSource`, whose
    ``get_token`` is a coroutine function) rather than to blocking code."""
    return inspect.iscoroutinefunction(getattr(source, "get_token", None))


class BearerFlow:
    """The auth flow, independent of which httpx-compatible library runs it."""

    def __init__(
        self,
        manager: TokenSource | SyncTokenSource,
        *,
        scope: ScopeArg = None,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> None:
        self._manager = manager
        # Decided once here, not per request: whether get_token() is a coroutine function
        # tells an async source (TokenManager) from a blocking one (SyncTokenManager).
        is_async = is_async_source(manager)
        self._async: TokenSource | None = manager if is_async else None  # type: ignore[assignment]
        self._sync: SyncTokenSource | None = None if is_async else manager  # type: ignore[assignment]
        self._args: dict[str, Any] = {"resource": resource, "audience": audience}
        self._scope = scope
        # The per-request call, bound once: ``get_token()`` with no arguments when the
        # auth is for the manager's own scope (its default entry, the common case).
        self._get_token: Any = None
        if is_async:
            get_token = manager.get_token
            if scope is None and resource is None and audience is None:
                self._get_token = get_token
            else:
                self._get_token = functools.partial(get_token, scope, resource=resource, audience=audience)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._manager!r})"

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        manager = self._async
        if manager is None:
            raise TypeError("use TokenManager.auth() (an async token source) with an async client")
        replayable = _replayable(request)  # decided before the body is sent and consumed
        token = await self._get_token()
        dpop = token.token_type == DPOP
        if dpop:
            url = str(request.url)  # only a proof needs it: not on the Bearer path
            response = yield _authorize(request, token, await self._proof_async(request, url, token))
        else:
            # The first attempt of a Bearer request: one header set, nothing else (the
            # request carries no proof of ours to remove yet).
            url = ""
            request.headers["Authorization"] = f"Bearer {token.value}"
            response = yield request
        if dpop and (nonce := _nonce_of(response)) is not None:
            kept = manager.remember_dpop_nonce(url, nonce)  # type: ignore[attr-defined]
            if kept and replayable and is_dpop_nonce_challenge(response):
                await response.aread()
                response = yield _authorize(request, token, await self._proof_async(request, url, token))
        if replayable and is_invalid_token_challenge(response):
            await response.aread()
            await manager.invalidate(token)
            token = await manager.get_token(self._scope, **self._args)
            proof = await self._proof_async(request, str(request.url), token) if token.is_dpop else None
            yield _authorize(request, token, proof)

    async def _proof_async(self, request: Any, url: str, token: AccessToken) -> str | None:
        make = getattr(self._manager, "dpop_proof", None)
        if make is None:
            raise TypeError("a DPoP token needs a token source that makes DPoP proofs (TokenManager)")
        proof: str | None = await make(request.method, url, token)
        return proof

    def _proof_sync(self, request: Any, url: str, token: AccessToken) -> str | None:
        make = getattr(self._manager, "dpop_proof", None)
        if make is None:
            raise TypeError("a DPoP token needs a token source that makes DPoP proofs (SyncTokenManager)")
        proof: str | None = make(request.method, url, token)
        return proof

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        manager = self._sync
        if manager is None:
            raise TypeError("use SyncTokenManager.auth() (a blocking token source) with a blocking client")
        replayable = _replayable(request)
        token = manager.get_token(self._scope, **self._args)
        dpop = token.token_type == DPOP
        if dpop:
            url = str(request.url)  # only a proof needs it: not on the Bearer path
            response = yield _authorize(request, token, self._proof_sync(request, url, token))
        else:
            url = ""  # the first attempt of a Bearer request: one header set, as in async
            request.headers["Authorization"] = f"Bearer {token.value}"
            response = yield request
        if dpop and (nonce := _nonce_of(response)) is not None:
            kept = manager.remember_dpop_nonce(url, nonce)  # type: ignore[attr-defined]
            if kept and replayable and is_dpop_nonce_challenge(response):
                response.read()
                response = yield _authorize(request, token, self._proof_sync(request, url, token))
        if replayable and is_invalid_token_challenge(response):
            response.read()
            manager.invalidate(token)
            token = manager.get_token(self._scope, **self._args)
            proof = self._proof_sync(request, str(request.url), token) if token.is_dpop else None
            yield _authorize(request, token, proof)


class BearerAuth(BearerFlow, httpx.Auth):
    """Authenticates httpx requests with tokens from a :class:`~keyless_m2m.TokenManager`
    (``httpx.AsyncClient``) or :class:`~keyless_m2m.SyncTokenManager` (``httpx.Client``),
    or any other :class:`~keyless_m2m.source.TokenSource` / ``SyncTokenSource``."""


@cache
def bearer_auth_class(library: str = "httpx") -> type[BearerFlow]:
    """The bearer auth class for an httpx-compatible library (``"httpx"``, ``"httpx2"``)."""
    if library == "httpx":
        return BearerAuth
    module = importlib.import_module(library)
    return type("BearerAuth", (BearerFlow, module.Auth), {"__module__": __name__})


class BearerSource:
    """``auth()`` for a token source: both token managers inherit it, so the httpx auth
    of the async and of the blocking manager is made, and typed, in one place."""

    @overload
    def auth(
        self,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
        library: Literal["httpx"] = "httpx",
    ) -> BearerAuth: ...
    @overload
    def auth(
        self,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
        library: str,
    ) -> BearerFlow: ...
    def auth(
        self,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
        library: str = "httpx",
    ) -> BearerFlow:
        """An ``httpx.Auth`` adding ``Authorization: Bearer`` and retrying once after a 401
        ``invalid_token``: ``httpx.AsyncClient(auth=tokens.auth())`` for a
        :class:`~keyless_m2m.TokenManager`, ``httpx.Client(auth=tokens.auth())`` for a
        :class:`~keyless_m2m.SyncTokenManager`. With ``library=`` (``"httpx2"``), the same
        flow on that library's ``Auth``."""
        source = cast("TokenSource | SyncTokenSource", self)
        return bearer_auth_class(library)(source, scope=scope, resource=resource, audience=audience)
