"""``requests`` auth for a blocking token source (``pip install 'keyless-m2m[requests]'``).

>>> with SyncTokenManager(token_endpoint, client_auth) as tokens:
...     with requests.Session() as session:
...         session.auth = BearerAuth(tokens, scope="pockets.read")
...         session.get("https://api.example/v2/pockets/")
<Response [200]>

The same flow as ``tokens.auth()`` for httpx (:class:`keyless_m2m.bearer.BearerFlow`,
driven here through requests' ``response`` hook): ``Authorization: Bearer``; a 401 whose
challenge says ``error="invalid_token"`` invalidates the token and sends the request once
more with the next one, if its body can be sent again (none, ``bytes`` or ``str``: a
file or a generator is not replayed, its 401 is returned); a DPoP-bound token goes as
``Authorization: DPoP`` with a fresh proof per request, and a ``use_dpop_nonce``
challenge gets one replay with the API's nonce.

The auth object keeps no per-request state (each request gets its own flow), so one
``Session`` can serve many threads: the token source's single flight makes it one token
request for all of them.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ..bearer import NotReplayableError, answer_needed
from ..errors import MissingExtraError
from ..source import SyncTokenSource
from ._base import FlowHolder

try:
    from requests.auth import AuthBase
    from requests.cookies import extract_cookies_to_jar
except ImportError:
    raise MissingExtraError("requests", "requests") from None

if TYPE_CHECKING:
    from collections.abc import Generator

    from requests import PreparedRequest, Response


__all__ = ["BearerAuth"]


class _Request:
    """A ``PreparedRequest`` as the flow reads an httpx request; it is its own ``headers``
    too (what the flow writes: ``[name] = value`` and ``pop``). Once a response came back,
    the next request the flow authorizes is a copy, so that the response keeps the request
    it answered (``response.request``) and requests' own copies stay untouched."""

    __slots__ = ("answered", "prepared", "proof")

    def __init__(self, prepared: PreparedRequest) -> None:
        self.prepared = prepared
        self.answered = False
        self.proof = False  # a DPoP proof went on it: the flow reads every answer's nonce

    @property
    def method(self) -> str:
        return self.prepared.method or "GET"

    @property
    def url(self) -> str:
        return self.prepared.url or ""

    @property
    def headers(self) -> _Request:
        if self.answered:
            self.prepared = self.prepared.copy()
            self.answered = False
        return self

    @property
    def content(self) -> bytes | str | None:
        body = self.prepared.body
        if body is None or isinstance(body, bytes | str):
            return body
        raise NotReplayableError  # a file or a generator: read once

    def __setitem__(self, name: str, value: str) -> None:
        if name == "DPoP":
            self.proof = True
        self.prepared.headers[name] = value

    def pop(self, name: str, default: str | None = None) -> str | None:
        # MutableMapping.pop of an absent header (the DPoP header a Bearer request lacks)
        # raises and catches a KeyError: a quarter of the auth step. The dict behind
        # requests' CaseInsensitiveDict (``_store``: lowercased name -> (name, value), as
        # since requests 1.x) pops without one; anything else takes the slow path.
        headers = self.prepared.headers
        store = vars(headers).get("_store")
        if not isinstance(store, dict):
            return headers.pop(name, default)
        item = store.pop(name.lower(), None)
        return default if item is None else item[1]


class _Response:
    """A ``Response`` as the flow reads an httpx response; its own ``headers`` view, whose
    ``get_list`` gives each header line apart (urllib3 keeps them; requests' mapping joins
    them with commas)."""

    __slots__ = ("response",)

    def __init__(self, response: Response) -> None:
        self.response = response

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> _Response:
        return self

    def get(self, name: str) -> str | None:
        return self.response.headers.get(name)

    def get_list(self, name: str) -> list[str]:
        getlist = getattr(getattr(self.response.raw, "headers", None), "getlist", None)
        if getlist is not None:
            return list(getlist(name))
        value = self.response.headers.get(name)
        return [] if value is None else [value]

    def read(self) -> None:
        # The 401 is answered again: read it to the end so its connection goes back to the pool.
        self.response.content  # noqa: B018
        self.response.close()


class BearerAuth(FlowHolder[SyncTokenSource], AuthBase):
    """Authenticates requests with tokens from a :class:`~keyless_m2m.SyncTokenManager`
    (or any other :class:`~keyless_m2m.source.SyncTokenSource`) for ``scope``
    (``resource``, ``audience``); see the module docstring. Thread-safe."""

    asynchronous = False

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        request = _Request(r)
        flow = self._flow.sync_auth_flow(request)
        next(flow)  # the token (and proof) on the request, as the flow's first step
        on_response = partial(_answer, flow, request)
        # Copies of a prepared request share its hook lists (PreparedRequest.copy): this
        # request's hook goes on a list of its own, not on those of the copies.
        r.hooks = {**r.hooks, "response": [*r.hooks.get("response", ()), on_response]}
        return r


def _answer(flow: Generator[Any, Any, None], request: _Request, response: Response, **send: Any) -> Response:
    """Hand ``response`` to the flow; send each request it authorizes again (at most two:
    a DPoP nonce, then an ``invalid_token``) and return the last answer. A redirect's
    response arrives here too, after the flow has ended: it passes through."""
    if not answer_needed(response.status_code, request.proof):
        return response
    while True:
        request.answered = True
        try:
            flow.send(_Response(response))
        except StopIteration:
            return response
        replay = request.prepared
        # The 401's cookies go with the replay, as with requests' own digest auth.
        cookies = replay._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(cookies, response.request, response.raw)  # type: ignore[no-untyped-call]
        replay.prepare_cookies(cookies)
        adapter = response.connection
        answer: Response = adapter.send(replay, **send)
        answer.history.append(response)
        answer.request = replay
        response = answer
