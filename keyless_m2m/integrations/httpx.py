"""``httpx.Auth`` for a token manager: bearer header, one retry after ``invalid_token``.

>>> async with httpx.AsyncClient(auth=tokens.auth()) as http:    # doctest: +SKIP
...     await http.get("https://api.example/v2/pockets/")

When the API answers 401 with ``WWW-Authenticate: Bearer error="invalid_token"``, the
token that was sent is invalidated (only if it is still the cached one, so a burst of 401s
causes one refresh) and the request is sent once more with the next token. A request
whose body is a stream that cannot be replayed is not retried: its 401 is returned.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ..manager import ResourceArg, ScopeArg, TokenManager
    from ..sync import SyncTokenManager
    from ..token import AccessToken

__all__ = ["BearerAuth", "is_invalid_token_challenge"]

_INVALID_TOKEN = re.compile(r'(?:^|[\s,])error\s*=\s*"?invalid_token"?(?:[\s,]|$)', re.IGNORECASE)


def is_invalid_token_challenge(response: httpx.Response) -> bool:
    """A 401 whose Bearer challenge says ``error="invalid_token"`` (RFC 6750 section 3.1)."""
    if response.status_code != 401:
        return False
    for challenge in response.headers.get_list("www-authenticate"):
        scheme, _, params = challenge.strip().partition(" ")
        if scheme.lower() == "bearer" and _INVALID_TOKEN.search(params):
            return True
    return False


def _replayable(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 - raises when the body is an unread stream
    except httpx.RequestNotRead:
        return False
    return True


def _authorize(request: httpx.Request, token: AccessToken) -> httpx.Request:
    request.headers["Authorization"] = f"Bearer {token.value}"
    return request


class BearerAuth(httpx.Auth):
    """Authenticates httpx requests with tokens from a :class:`~keyless_m2m.TokenManager`
    (``AsyncClient``) or :class:`~keyless_m2m.SyncTokenManager` (``Client``)."""

    def __init__(
        self,
        manager: TokenManager | SyncTokenManager,
        *,
        scope: ScopeArg = None,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> None:
        self._manager = manager
        self._args: dict[str, Any] = {"resource": resource, "audience": audience}
        self._scope = scope

    def __repr__(self) -> str:
        return f"BearerAuth({self._manager!r})"

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        from ..manager import TokenManager

        manager = self._manager
        if not isinstance(manager, TokenManager):
            raise TypeError("use TokenManager.auth() with httpx.AsyncClient")
        token = await manager.get_token(self._scope, **self._args)
        response = yield _authorize(request, token)
        if is_invalid_token_challenge(response) and _replayable(request):
            await response.aread()
            await manager.invalidate(token)
            token = await manager.get_token(self._scope, **self._args)
            yield _authorize(request, token)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        from ..sync import SyncTokenManager

        manager = self._manager
        if not isinstance(manager, SyncTokenManager):
            raise TypeError("use SyncTokenManager.auth() with httpx.Client")
        token = manager.get_token(self._scope, **self._args)
        response = yield _authorize(request, token)
        if is_invalid_token_challenge(response) and _replayable(request):
            response.read()
            manager.invalidate(token)
            token = manager.get_token(self._scope, **self._args)
            yield _authorize(request, token)
