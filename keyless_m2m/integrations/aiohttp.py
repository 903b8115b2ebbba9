"""An aiohttp client middleware for an async token source
(``pip install 'keyless-m2m[aiohttp]'``; aiohttp 3.12 or newer, which has client
middlewares).

>>> async with TokenManager(token_endpoint, client_auth) as tokens:    # doctest: +SKIP
...     bearer = BearerMiddleware(tokens, scope="pockets.read")
...     async with aiohttp.ClientSession(middlewares=(bearer,)) as session:
...         async with session.get("https://api.example/v2/pockets/") as response:
...             pockets = await response.json()

The same flow as ``tokens.auth()`` for httpx (:class:`keyless_m2m.bearer.BearerFlow`):
``Authorization: Bearer``; a 401 whose challenge says ``error="invalid_token"``
invalidates the token and sends the request once more with the next one, if its body
can be sent again (none, bytes, text, JSON or a urlencoded form: a stream, a file or a
multipart body is not replayed, its 401 is returned); a DPoP-bound token goes as
``Authorization: DPoP`` with a fresh proof per request, and a ``use_dpop_nonce``
challenge gets one replay with the API's nonce. Concurrent requests share one token
request through the source's single flight.

aiohttp runs on asyncio only, so this integration does too (the token source itself
runs on asyncio and trio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..bearer import BearerFlow, is_async_source
from ..errors import MissingExtraError

try:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
    from aiohttp.payload import BytesPayload
except ImportError:
    raise MissingExtraError("aiohttp", "aiohttp") from None

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from ..source import ResourceArg, ScopeArg, TokenSource

__all__ = ["BearerMiddleware"]


class _NotReplayableError(Exception):
    """The body is a stream, a file or multipart: it may not be sent twice."""


class _Request:
    """A ``ClientRequest`` as the flow reads an httpx request."""

    __slots__ = ("request",)

    def __init__(self, request: ClientRequest) -> None:
        self.request = request

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def url(self) -> str:
        return str(self.request.url)

    @property
    def headers(self) -> CIMultiDict[str]:
        return self.request.headers

    @property
    def content(self) -> bytes:
        body = self.request.body
        if body == b"" or isinstance(body, BytesPayload):  # bytes, str, JSON, urlencoded forms
            return b""
        raise _NotReplayableError


class _Headers:
    __slots__ = ("response",)

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    def get(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def get_list(self, name: str) -> list[str]:
        return self.response.headers.getall(name, [])


class _Response:
    __slots__ = ("headers", "response")

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.headers = _Headers(response)

    @property
    def status_code(self) -> int:
        return self.response.status

    async def aread(self) -> None:
        # The 401 is answered again: read it to the end and give its connection back.
        await self.response.read()
        self.response.release()


class BearerMiddleware:
    """An aiohttp client middleware (``ClientSession(middlewares=(BearerMiddleware(tokens),))``,
    or per request: ``session.get(url, middlewares=(...))``) adding tokens from a
    :class:`~keyless_m2m.TokenManager` (or any other :class:`~keyless_m2m.source.TokenSource`)
    for ``scope`` (``resource``, ``audience``); see the module docstring."""

    def __init__(
        self,
        source: TokenSource,
        *,
        scope: ScopeArg = None,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> None:
        if not is_async_source(source):
            raise TypeError(
                "aiohttp is async: give BearerMiddleware a TokenSource (TokenManager), not a SyncTokenManager"
            )
        self._flow = BearerFlow(source, scope=scope, resource=resource, audience=audience)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._flow!r})"

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        flow = self._flow.async_auth_flow(_Request(request))
        try:
            await flow.__anext__()  # the token (and proof) on the request
            response = await handler(request)
            # The flow asks for at most two more sends (a DPoP nonce, then invalid_token).
            while True:
                try:
                    await flow.asend(_Response(response))
                except StopAsyncIteration:
                    return response
                response = await handler(request)
        finally:
            await flow.aclose()
