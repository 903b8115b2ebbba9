"""An aiohttp client middleware for an async token source
(``pip install 'keyless-m2m[aiohttp]'``; aiohttp 3.12 or newer, which has client
middlewares).

>>> async with TokenManager(token_endpoint, client_auth) as tokens:
...     bearer = BearerMiddleware(tokens, scope="pockets.read")
...     async with aiohttp.ClientSession(middlewares=(bearer,), trust_env=True) as session:
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

from typing import TYPE_CHECKING, Any

from .._runtime import import_extra
from ..bearer import NotReplayableError
from ..source import TokenSource
from ._base import FlowHolder

_aiohttp = import_extra("aiohttp", "aiohttp")  # MissingExtraError without it

if TYPE_CHECKING:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

__all__ = ["BearerMiddleware"]


class _Request:
    """A ``ClientRequest`` as the flow reads an httpx request: its ``method``, ``url`` and
    ``headers`` (a ``CIMultiDict``) are the request's own; ``content`` says whether the
    body may be sent again."""

    __slots__ = ("request",)

    def __init__(self, request: ClientRequest) -> None:
        self.request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self.request, name)

    @property
    def content(self) -> bytes:
        body = self.request.body
        if body == b"" or isinstance(
            body, _aiohttp.payload.BytesPayload
        ):  # bytes, str, JSON, urlencoded forms
            return b""
        raise NotReplayableError  # a stream, a file, multipart


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


class BearerMiddleware(FlowHolder[TokenSource]):
    """An aiohttp client middleware (``ClientSession(middlewares=(BearerMiddleware(tokens),))``,
    or per request: ``session.get(url, middlewares=(...))``) adding tokens from a
    :class:`~keyless_m2m.TokenManager` (or any other :class:`~keyless_m2m.source.TokenSource`)
    for ``scope`` (``resource``, ``audience``); see the module docstring."""

    asynchronous = True

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
