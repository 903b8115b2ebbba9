"""gRPC authentication from a token source: call credentials for ``grpc`` and client
interceptors for ``grpc`` and ``grpc.aio``.

>>> channel = grpc.secure_channel(                                    # sync_tokens: a SyncTokenManager
...     "api.example:443",
...     grpc.composite_channel_credentials(grpc.ssl_channel_credentials(), call_credentials(sync_tokens)),
... )
>>> async with grpc.aio.secure_channel(                               # tokens: a TokenManager
...     "api.example:443", grpc.ssl_channel_credentials(), interceptors=aio_interceptors(tokens)
... ) as aio_channel:
...     say = aio_channel.unary_unary("/demo.Echo/Say")

Three ways, over one :class:`~keyless_m2m.source.TokenSource` (async) or
:class:`~keyless_m2m.source.SyncTokenSource` (blocking):

- :func:`call_credentials` (``grpc``, blocking source): an ``AuthMetadataPlugin`` that gRPC
  calls in its own thread before each call. gRPC sends call credentials only over a secure
  channel (TLS, or ``grpc.local_channel_credentials()``). Call credentials never see the
  answer, so they cannot retry after an ``UNAUTHENTICATED``.
- :func:`interceptors` (``grpc``, blocking source) and :func:`aio_interceptors`
  (``grpc.aio``, async source): client interceptors that add the ``authorization``
  metadata and, for a unary-unary call the server answers ``UNAUTHENTICATED``, invalidate
  the token that was sent and send the call once more with the next one. A streaming
  call is not replayed (its requests may be consumed, its answers already read).
  Interceptors also run on an insecure channel: the token then travels in clear text,
  so use them over TLS.

``grpc.aio`` gets interceptors rather than call credentials: a credentials plugin is
called synchronously on a gRPC thread, where an async source cannot be awaited; an
interceptor runs on the event loop and awaits the token. ``grpc.aio`` runs on asyncio
only (not trio).

A token that cannot be had ends the call with a gRPC error the caller handles like any
other: ``UNAVAILABLE`` when the failure is retryable (the authorization server is down,
:attr:`~keyless_m2m.KeylessM2MError.retryable`), ``UNAUTHENTICATED`` otherwise (the
client was refused). Its details name the library's error and its message, which never
hold a secret; an exception of another kind (from a token source of your own) is named by
its type only, and not chained. (Through call credentials, gRPC itself picks the status:
``UNAVAILABLE``, with the same details.)

A DPoP-bound token (RFC 9449) goes as ``authorization: DPoP <token>`` with a ``dpop``
proof for ``POST`` and the call's URL, ``https://<authority>/<service>/<method>``: the
call credentials know it from gRPC; the interceptors need the ``authority=`` the channel
connects to. This module imports ``grpc`` when it is imported: ``pip install
'keyless-m2m[grpc]'``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, NoReturn, TypeVar

from .._runtime import import_extra
from ..errors import ConfigurationError, KeylessM2MError
from ..source import ResourceArg, ScopeArg, SyncTokenSource, TokenSource

# Any: grpcio ships no type information.
_S = TypeVar("_S", TokenSource, SyncTokenSource)

grpc: Any = import_extra("grpc", "grpc")
grpc_aio: Any = import_extra("grpc.aio", "grpc")

if TYPE_CHECKING:
    from ..token import AccessToken

__all__ = [
    "TokenMetadataPlugin",
    "TokenUnavailableError",
    "aio_interceptors",
    "call_credentials",
    "interceptors",
]

Metadata = Sequence[tuple[str, str | bytes]]


def _failure_text(exc: BaseException) -> str:
    """What a gRPC error may say of a failed token fetch: the library's own messages are
    free of secrets by contract; anything else is named by its type only."""
    if isinstance(exc, KeylessM2MError):
        return f"no access token: {type(exc).__name__}: {exc}"
    return f"no access token: {type(exc).__name__}"


def _cause(exc: BaseException) -> KeylessM2MError | None:
    """The exception a gRPC error may chain: the library's own (checked free of secrets)."""
    return exc if isinstance(exc, KeylessM2MError) else None


def _raise_without_context(error: BaseException, cause: BaseException | None) -> NoReturn:
    """Raise ``error`` outside the ``except`` block that caught the failure, so that a
    foreign exception is not kept as its ``__context__`` (which ``from None`` would only
    hide from the traceback, not from an error tracker)."""
    raise error from cause


def _failure_code(exc: BaseException) -> Any:
    return (
        grpc.StatusCode.UNAVAILABLE if getattr(exc, "retryable", False) else grpc.StatusCode.UNAUTHENTICATED
    )


class TokenUnavailableError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A blocking gRPC call that did not start: the interceptor could not get a token.

    A ``grpc.RpcError`` like the ones gRPC raises, with ``code()`` (``UNAVAILABLE`` when
    retryable, else ``UNAUTHENTICATED``) and ``details()``; ``__cause__`` is the library's
    :class:`~keyless_m2m.KeylessM2MError` (another kind of exception is not chained)."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._code, self._details), dict(vars(self)))

    def __repr__(self) -> str:
        return f"TokenUnavailableError({self._code}, {self._details!r})"

    def __str__(self) -> str:
        return f"<{type(self).__name__} of RPC: status = {self._code}, details = {self._details!r}>"

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def debug_error_string(self) -> str:
        return self._details

    def initial_metadata(self) -> Metadata:
        return ()

    def trailing_metadata(self) -> Metadata:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> BaseException:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        raise self

    def __next__(self) -> Any:
        raise self


class _Args:
    """What every adapter asks the source for: ``get_token(scope, resource=, audience=)``."""

    def __init__(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> None:
        self.scope = scope
        self.options: dict[str, Any] = {"resource": resource, "audience": audience}


def _check_source(source: object, *, blocking: bool) -> None:
    get_token = getattr(source, "get_token", None)
    if get_token is None or not callable(getattr(source, "invalidate", None)):
        raise ConfigurationError("the token source needs get_token() and invalidate()")
    if inspect.iscoroutinefunction(get_token) == blocking:
        wanted = "a blocking SyncTokenSource (SyncTokenManager)" if blocking else "an async TokenSource"
        raise ConfigurationError(f"this adapter needs {wanted}")


def _authorization(token: AccessToken, proof: str | None) -> list[tuple[str, str]]:
    if proof is None:
        return [("authorization", f"Bearer {token.value}")]
    return [("authorization", f"DPoP {token.value}"), ("dpop", proof)]


def _method_url(authority: str | None, method: str | bytes) -> str:
    if authority is None:
        raise ConfigurationError(
            "a DPoP-bound token needs the call's URL: pass authority='host:port' (the channel's target)"
        )
    path = method.decode("ascii") if isinstance(method, bytes) else method
    return f"https://{authority}{path}"


def _plugin_url(service_url: str, method_name: str) -> str:
    """The call's URL from gRPC's plugin context; gRPC leaves the scheme out over local
    credentials (``://host:port/pkg.Service``): HTTP/2 on a secure channel, ``https``."""
    if service_url.startswith("://"):
        service_url = "https" + service_url
    return f"{service_url}/{method_name}"


def _with_metadata(details: Any, added: list[tuple[str, str]], *, aio: bool) -> Any:
    """``details`` with ``added`` in place of any ``authorization``/``dpop`` it had."""
    kept = [(k, v) for k, v in (details.metadata or ()) if k not in ("authorization", "dpop")]
    metadata = grpc_aio.Metadata(*kept, *added) if aio else [*kept, *added]
    if hasattr(details, "_replace"):  # gRPC's own details are named tuples
        return details._replace(metadata=metadata)
    if aio:
        return grpc_aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
    return _CallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
        getattr(details, "compression", None),
    )


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", bool | None),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """``grpc.ClientCallDetails`` with other metadata (gRPC's own class is private)."""


# -- call credentials (grpc, blocking source) --------------------------------------------


class TokenMetadataPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    """The ``authorization`` metadata of every call, from a blocking token source; gRPC
    calls it in its own thread. Use it through :func:`call_credentials`."""

    def __init__(
        self,
        source: SyncTokenSource,
        scope: ScopeArg = None,
        *,
        resource: ResourceArg = None,
        audience: str | None = None,
    ) -> None:
        _check_source(source, blocking=True)
        self._source = source
        self._args = _Args(scope, resource, audience)

    def __repr__(self) -> str:
        return f"TokenMetadataPlugin({self._source!r})"

    def __call__(self, context: Any, callback: Any) -> None:
        try:
            metadata = self._metadata(context)
        except Exception as exc:
            # Never raised into gRPC (which would log it): the call fails with this text.
            callback(None, RuntimeError(_failure_text(exc)))
            return
        callback(metadata, None)

    def _metadata(self, context: Any) -> list[tuple[str, str]]:
        source = self._source
        token = source.get_token(self._args.scope, **self._args.options)
        proof = None
        if token.is_dpop:
            make = getattr(source, "dpop_proof", None)
            if make is None:
                raise ConfigurationError("a DPoP token needs a token source that makes DPoP proofs")
            proof = make("POST", _plugin_url(context.service_url, context.method_name), token)
        return _authorization(token, proof)


def call_credentials(
    source: SyncTokenSource,
    scope: ScopeArg = None,
    *,
    resource: ResourceArg = None,
    audience: str | None = None,
) -> Any:
    """``grpc.CallCredentials`` adding ``authorization: Bearer <token>`` to every call,
    with tokens from a blocking source (:class:`~keyless_m2m.SyncTokenManager`); compose
    them with channel credentials (``grpc.composite_channel_credentials``). No retry after
    ``UNAUTHENTICATED`` (see :func:`interceptors`)."""
    plugin = TokenMetadataPlugin(source, scope, resource=resource, audience=audience)
    return grpc.metadata_call_credentials(plugin, name="keyless-m2m")


# -- interceptors (grpc, blocking source) ------------------------------------------------


class _Interceptor(Generic[_S]):
    """What both kinds of interceptor keep: the source, the token arguments, the authority."""

    def __init__(self, source: _S, args: _Args, authority: str | None) -> None:
        self._source: _S = source
        self._args = args
        self._authority = authority

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._source!r})"


class _SyncInterceptor(_Interceptor[SyncTokenSource]):
    def _authorized(self, details: Any) -> tuple[AccessToken, Any]:
        """A token and ``details`` carrying it; any failure (the token, its DPoP proof) as
        :class:`TokenUnavailableError`."""
        try:
            token = self._source.get_token(self._args.scope, **self._args.options)
            return token, self._with_token(details, token)
        except Exception as exc:
            error, cause = TokenUnavailableError(_failure_code(exc), _failure_text(exc)), _cause(exc)
        _raise_without_context(error, cause)

    def _with_token(self, details: Any, token: AccessToken) -> Any:
        proof = None
        if token.is_dpop:
            make = getattr(self._source, "dpop_proof", None)
            if make is None:
                raise ConfigurationError("a DPoP token needs a token source that makes DPoP proofs")
            proof = make("POST", _method_url(self._authority, details.method), token)
        return _with_metadata(details, _authorization(token, proof), aio=False)


class _SyncUnaryUnary(_SyncInterceptor, grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        token, details = self._authorized(client_call_details)
        call = continuation(details, request)
        if call.code() != grpc.StatusCode.UNAUTHENTICATED:
            return call
        self._source.invalidate(token)
        return continuation(self._authorized(client_call_details)[1], request)


class _SyncUnaryStream(_SyncInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._authorized(client_call_details)[1], request)


class _SyncStreamUnary(_SyncInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._authorized(client_call_details)[1], request_iterator)


class _SyncStreamStream(_SyncInterceptor, grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._authorized(client_call_details)[1], request_iterator)


def interceptors(
    source: SyncTokenSource,
    scope: ScopeArg = None,
    *,
    resource: ResourceArg = None,
    audience: str | None = None,
    authority: str | None = None,
) -> list[Any]:
    """Client interceptors for a blocking ``grpc`` channel, one per kind of call:
    ``grpc.intercept_channel(channel, *interceptors(tokens))``. They add the
    ``authorization`` metadata; a unary-unary call answered ``UNAUTHENTICATED`` is sent
    once more with a fresh token. ``authority``: the ``host:port`` the channel connects
    to, needed only for DPoP-bound tokens (the proof's URL). A token that cannot be had
    raises :class:`TokenUnavailableError` (a ``grpc.RpcError``). The unary-unary
    interceptor waits for the answer before it returns (to see its status), so a
    ``.future()`` call through it completes before the future is handed back."""
    _check_source(source, blocking=True)
    args = _Args(scope, resource, audience)
    kinds = (_SyncUnaryUnary, _SyncUnaryStream, _SyncStreamUnary, _SyncStreamStream)
    return [kind(source, args, authority) for kind in kinds]


# -- interceptors (grpc.aio, async source) -----------------------------------------------


class _AioInterceptor(_Interceptor[TokenSource]):
    async def _authorized(self, details: Any) -> tuple[AccessToken, Any]:
        """A token and ``details`` carrying it; any failure (the token, its DPoP proof) as
        ``grpc.aio.AioRpcError``, the one kind of error ``grpc.aio`` expects of an
        interceptor (grpcio 1.62, the lowest supported, breaks the call's cleanup on any other)."""
        try:
            token = await self._source.get_token(self._args.scope, **self._args.options)
            return token, await self._with_token(details, token)
        except Exception as exc:
            text, code, cause = _failure_text(exc), _failure_code(exc), _cause(exc)
        error = grpc_aio.AioRpcError(code, grpc_aio.Metadata(), grpc_aio.Metadata(), text, text)
        _raise_without_context(error, cause)

    async def _with_token(self, details: Any, token: AccessToken) -> Any:
        proof = None
        if token.is_dpop:
            make = getattr(self._source, "dpop_proof", None)
            if make is None:
                raise ConfigurationError("a DPoP token needs a token source that makes DPoP proofs")
            proof = await make("POST", _method_url(self._authority, details.method), token)
        return _with_metadata(details, _authorization(token, proof), aio=True)


class _AioUnaryUnary(_AioInterceptor, grpc_aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        token, details = await self._authorized(client_call_details)
        call = await continuation(details, request)
        if await call.code() != grpc.StatusCode.UNAUTHENTICATED:
            return call
        await self._source.invalidate(token)
        return await continuation((await self._authorized(client_call_details))[1], request)


class _AioUnaryStream(_AioInterceptor, grpc_aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation((await self._authorized(client_call_details))[1], request)


class _AioStreamUnary(_AioInterceptor, grpc_aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation((await self._authorized(client_call_details))[1], request_iterator)


class _AioStreamStream(_AioInterceptor, grpc_aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation((await self._authorized(client_call_details))[1], request_iterator)


def aio_interceptors(
    source: TokenSource,
    scope: ScopeArg = None,
    *,
    resource: ResourceArg = None,
    audience: str | None = None,
    authority: str | None = None,
) -> list[Any]:
    """Client interceptors for a ``grpc.aio`` channel (asyncio), one per kind of call:
    ``grpc.aio.secure_channel(target, credentials, interceptors=aio_interceptors(tokens))``.
    They await the token from an async source (:class:`~keyless_m2m.TokenManager`) and add
    the ``authorization`` metadata; a unary-unary call answered ``UNAUTHENTICATED`` is sent
    once more with a fresh token. ``authority`` as in :func:`interceptors`. A token that
    cannot be had ends the call with a ``grpc.aio.AioRpcError``."""
    _check_source(source, blocking=False)
    args = _Args(scope, resource, audience)
    kinds = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    return [kind(source, args, authority) for kind in kinds]
