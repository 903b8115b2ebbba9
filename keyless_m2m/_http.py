"""What the token endpoint and discovery share about HTTP: the client they build (which
CAs it trusts, which proxy it uses: :func:`build_client`), a response body read with a cap
on its *decoded* size, and the kind of a transport failure.

The body is read raw (``aiter_raw``) and decoded here, ``max_length`` bytes at a time, so a
compression bomb costs at most the cap plus one network chunk, never its inflated size
(httpx decodes a whole chunk at once: one 64 KiB chunk of a gzip bomb is 64 MiB). Only
codings whose output can be bounded are offered and accepted: ``gzip`` and ``deflate``,
one layer.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import ipaddress
import logging
import os
import socket
import ssl
import sys
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import anyio
import anyio.to_thread
import httpcore  # noqa: F401 - httpx imports it at its first client: here, at import, not then
import httpx

from ._text import printable
from .errors import MissingExtraError

__all__ = [
    "ACCEPT_ENCODING",
    "BodyError",
    "ProxyEnvironment",
    "build_client",
    "check_proxies",
    "default_ssl_context",
    "default_trust",
    "prepare_client",
    "read_body",
    "shared_verification",
    "tls_verification",
    "transport_failure",
]

logger = logging.getLogger("keyless_m2m")

ACCEPT_ENCODING: Final = "gzip, deflate"
_GZIP = 16 + zlib.MAX_WBITS
_RESETS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)


class BodyError(Exception):
    """The body is over the cap, in a coding we do not accept, or corrupt (the message
    says which; it holds no byte of the body)."""


class _Inflater:
    """One layer of ``gzip`` or ``deflate``, decoded at most ``limit`` bytes at a time."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.started = False
        self._raw_deflate = False
        self._inflate = zlib.decompressobj(_GZIP if coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes, limit: int) -> Iterator[bytes]:
        """Decoded pieces of ``data``; stops (drops the rest) once ``limit`` bytes came out."""
        pending = data
        while pending and limit > 0:  # never 0: decompress(data, 0) means "no limit"
            if self._inflate.eof:
                if self.coding != "gzip":
                    raise BodyError("data after the end of the deflate body")
                self._inflate = zlib.decompressobj(_GZIP)  # another member (RFC 1952 allows several)
            try:
                piece = self._inflate.decompress(pending, limit)
            except zlib.error:
                if self.coding == "deflate" and not self.started and not self._raw_deflate:
                    # "deflate" is zlib-wrapped by the RFC, raw by some servers (httpx takes both)
                    self._raw_deflate = True
                    self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise BodyError(f"the {self.coding} body is corrupt") from None
            self.started = True
            limit -= len(piece)
            pending = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            if piece:
                yield piece

    def finish(self) -> None:
        if self.started and not self._inflate.eof:
            raise BodyError(f"the {self.coding} body is truncated")


def _codings(response: httpx.Response) -> list[str]:
    values = response.headers.get_list("content-encoding", split_commas=True)
    codings = [v.strip().lower() for v in values if v.strip() and v.strip().lower() != "identity"]
    if len(codings) > 1:
        raise BodyError(f"nested content-encoding {', '.join(codings)!r} is refused (one layer at most)")
    if codings and codings[0] == "x-gzip":
        return ["gzip"]
    if codings and codings[0] not in ("gzip", "deflate"):
        shown = printable(codings[0][:40])
        raise BodyError(f"content-encoding {shown!r} is refused (accepted: identity, gzip, deflate)")
    return codings


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, decoded; :class:`BodyError` past ``limit``
    decoded (or raw) bytes, for a refused coding, or for a corrupt body."""
    codings = _codings(response)
    inflater = _Inflater(codings[0]) if codings else None
    chunks: list[bytes] = []
    size = raw_size = 0
    if response.is_stream_consumed:
        # Built in memory (a test's MockTransport answer): httpx has decoded it already.
        body = response.content
        if len(body) > limit:
            raise BodyError(f"exceeds {limit} bytes once decoded")
        return body
    raw = response.aiter_raw()
    refused: BodyError | None = None
    async for data in raw:
        raw_size += len(data)
        try:
            if raw_size > limit:
                raise BodyError(f"exceeds {limit} bytes")
            pieces = [data] if inflater is None else inflater.feed(data, limit + 1 - size)
            for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise BodyError(f"exceeds {limit} bytes once decoded")
                chunks.append(piece)
        except BodyError as exc:
            refused = exc
            break
    if refused is not None:
        await _abandon(response, raw)
        raise refused
    if inflater is not None:
        inflater.finish()
    return b"".join(chunks)


async def _abandon(response: httpx.Response, raw: AsyncIterator[bytes]) -> None:
    """Stop reading ``response`` half-way. Closing the response first makes httpx's nested
    stream generators end (at once, with an error or without) when resumed; closing only
    the outer one would leave the inner ones for the garbage collector, which trio reports
    as a ResourceWarning."""
    await response.aclose()
    with contextlib.suppress(Exception):  # StopAsyncIteration, or the closed stream's error
        for _ in range(64):  # bounded: a closed stream has only what was buffered
            await raw.__anext__()


# -- the kind of a transport failure ------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of any exception group, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)


# TLS alerts a server sends when it wanted a client certificate (RFC 8705) and got none,
# or one it does not accept: OpenSSL's reason names, as ssl.SSLError.reason spells them.
_CLIENT_CERTIFICATE_ALERTS = {
    "CERTIFICATE_REQUIRED": "the server requires a TLS client certificate and none was presented",
    "UNKNOWN_CA": "the server does not trust the issuer of the TLS client certificate (unknown CA)",
    "BAD_CERTIFICATE": "the server refused the TLS client certificate (bad certificate)",
    "CERTIFICATE_UNKNOWN": "the server refused the TLS client certificate (certificate unknown)",
    "CERTIFICATE_EXPIRED": "the server refused the TLS client certificate: it has expired",
    "CERTIFICATE_REVOKED": "the server refused the TLS client certificate: it is revoked",
    "UNSUPPORTED_CERTIFICATE": "the server refused the TLS client certificate (unsupported certificate)",
    "ACCESS_DENIED": "the server denied access after the TLS handshake (its client certificate policy)",
}


def _client_certificate_refusal(reason: str) -> str | None:
    upper = reason.upper()
    if "ALERT" not in upper:
        return None
    for name, text in _CLIENT_CERTIFICATE_ALERTS.items():
        if name in upper:
            return (
                f"{text} ({printable(reason, 80)}; TlsClientAuth, SelfSignedTlsClientAuth or "
                "client_certificate= present one, RFC 8705)"
            )
    return None


def transport_failure(exc: BaseException, host: str) -> tuple[str, str, bool]:
    """``(reason, what happened, retryable)`` for an exception from the HTTP exchange.

    Reasons: ``tls_verification`` (never retryable), ``tls_client_certificate`` (the
    server refused the connection for want of an acceptable client certificate; never
    retryable), ``tls``, ``dns``,
    ``connection_refused``, ``connection_reset``, ``timeout``, ``proxy``, ``protocol``,
    ``network``. The text names the cause (an OpenSSL reason, the host name), never a
    value from the request.
    """
    causes = list(_chain(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "unknown reason"
            return "tls_verification", f"certificate verify failed: {printable(str(why), 120)}", False
    for cause in causes:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLCertVerificationError):
            refused = _client_certificate_refusal(str(cause.reason or cause))
            if refused is not None:
                return "tls_client_certificate", refused, False
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "dns", f"the name {host!r} does not resolve", True
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection_refused", "connection refused", True
    for cause in causes:
        if isinstance(cause, _RESETS):
            return "connection_reset", "the connection was reset", True
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "connection_reset", "the connection was reset", True
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or type(cause).__name__
            return "tls", f"TLS handshake failed: {printable(str(reason), 120)}", False
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "reading",
            httpx.WriteTimeout: "writing",
            httpx.PoolTimeout: "waiting for a pooled connection",
        }.get(type(exc), "waiting")
        return "timeout", f"timed out {phase}", True
    if isinstance(exc, httpx.ProxyError):
        return "proxy", "the proxy refused or failed the connection", True
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol", "the server broke the HTTP protocol or closed the connection early", True
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError | httpx.ConnectError):
        return "network", f"network error ({type(exc).__name__})", True
    # Anything else (LocalProtocolError, UnsupportedProtocol, InvalidURL, a UnicodeError
    # from a header, ...) will fail the same way if tried again.
    return "protocol", f"the HTTP exchange failed ({type(exc).__name__})", False


# -- the HTTP client the library builds: which CAs it trusts, which proxy it uses ---------------
#
# Proxies (the policy is in docs/security.md, "Proxies"): a plain http:// request never goes
# through a proxy (its body, the client's credentials, would be readable there); an https://
# request to a loopback host never does either (a proxy on another host would reach *its*
# loopback); other https:// requests go through HTTPS_PROXY, else ALL_PROXY, unless NO_PROXY
# names the host, as a CONNECT tunnel (or SOCKS), so TLS stays end to end with the server.
# The environment is read once, when the client is built; httpx's own reading of it is off
# (trust_env=False) so that this is the only rule.


def _environ(name: str) -> tuple[str, str] | None:
    """``(variable, value)`` of ``name`` in lower case, else upper case (as curl and
    :mod:`urllib.request` prefer the lower-case spelling); ``None`` when unset or empty."""
    for variable in (name.lower(), name.upper()):
        value = os.environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


def shown_proxy(url: str) -> str:
    """``host:port`` of a proxy URL: never its scheme's credentials (``user:password@``)."""
    try:
        parsed = httpx.URL(url if "://" in url else "http://" + url)
    except (httpx.InvalidURL, ValueError):
        return "an unparsable proxy URL"
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 1080)
    host = parsed.host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _no_proxy_match(entry: str, host: str, port: int) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    if "/" in entry:  # a CIDR block, as curl (7.86+) and Go take
        try:
            return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    if entry.startswith("[") and "]" in entry:  # [::1] or [::1]:8443
        name, _, rest = entry[1:].partition("]")
        entry_port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        name, _, entry_port = entry.partition(":")
    else:
        name, entry_port = entry, ""
    if entry_port and entry_port != str(port):
        return False
    name = name.removeprefix("*").removeprefix(".")
    return host == name or host.endswith("." + name)


def is_loopback_host(host: str) -> bool:
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxyEnvironment:
    """The proxy variables as read once: ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
    (each in lower case first). ``HTTP_PROXY`` is read only to say that it is not used."""

    https: tuple[str, str] | None
    all: tuple[str, str] | None
    no_proxy: tuple[str, ...]
    http: tuple[str, str] | None = None

    @classmethod
    def read(cls) -> ProxyEnvironment:
        no_proxy = _environ("no_proxy")
        entries = tuple(e.strip() for e in no_proxy[1].split(",") if e.strip()) if no_proxy else ()
        return cls(_environ("https_proxy"), _environ("all_proxy"), entries, _environ("http_proxy"))

    def __repr__(self) -> str:  # the values may hold the proxy's credentials
        def shown(setting: tuple[str, str] | None) -> str | None:
            return None if setting is None else f"{setting[0]}={shown_proxy(setting[1])}"

        return f"ProxyEnvironment(https={shown(self.https)}, all={shown(self.all)}, no_proxy={self.no_proxy})"

    def proxy_for(self, url: httpx.URL) -> tuple[str, str] | None:
        """``(variable, proxy URL)`` for a request to ``url``, or ``None`` for a direct one."""
        if url.scheme != "https" or is_loopback_host(url.host):
            return None  # plain http is never proxied; loopback is this machine
        port = url.port or 443
        host = url.host.lower().rstrip(".")
        if any(_no_proxy_match(entry, host, port) for entry in self.no_proxy):
            return None
        return self.https or self.all


def _proxy_url(variable: str, value: str) -> str:
    """The proxy URL of ``variable`` (``http://`` when it names none), checked: a
    :class:`~keyless_m2m.ConfigurationError` that never shows the value (it may hold the
    proxy's credentials) for an unusable one; :class:`MissingSocksError` for SOCKS
    without ``socksio``."""
    from .errors import ConfigurationError

    url = value if "://" in value else "http://" + value
    scheme = url.partition("://")[0].lower()
    if scheme not in ("http", "https", "socks5", "socks5h"):
        # The value is not shown: it may carry the proxy's credentials.
        raise ConfigurationError(
            f"{variable} names a proxy of scheme {scheme[:20]!r}; supported: http, https, socks5, socks5h"
        )
    if scheme.startswith("socks"):
        try:
            importlib.import_module("socksio")  # httpx's SOCKS support needs it
        except ImportError:
            raise MissingSocksError(variable) from None
    try:
        httpx.Proxy(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise ConfigurationError(
            f"{variable} is not a usable proxy URL ({type(exc).__name__}); its value is not shown"
        ) from None
    return url


def check_proxies(proxies: ProxyEnvironment) -> None:
    """Refuse, before any request, proxy settings that cannot work (see :func:`_proxy_url`)."""
    for setting in (proxies.https, proxies.all):
        if setting is not None:
            _proxy_url(*setting)


def _proxy_transport(variable: str, value: str, verify: ssl.SSLContext | bool) -> httpx.AsyncHTTPTransport:
    from .errors import ConfigurationError

    url = _proxy_url(variable, value)
    try:
        return httpx.AsyncHTTPTransport(verify=verify, proxy=url)
    except (ValueError, httpx.InvalidURL, ImportError) as exc:
        raise ConfigurationError(
            f"{variable} is not a usable proxy URL ({type(exc).__name__}); its value is not shown"
        ) from None


class MissingSocksError(MissingExtraError):
    """A proxy variable names a SOCKS proxy and ``socksio`` is not installed."""

    def __init__(self, variable: str) -> None:
        super().__init__("socks", "socksio")
        self.variable = variable
        self.msg = (
            f"{variable} names a SOCKS proxy, and SOCKS needs the 'socksio' package: "
            "pip install 'httpx[socks]' (or 'keyless-m2m[socks]'), or unset the variable"
        )
        self.args = (self.msg,)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.variable,), dict(vars(self)))


class _Routes(httpx.AsyncBaseTransport):
    """Sends each request directly or through the proxy :class:`ProxyEnvironment` names.

    Nothing is built until a request needs it, and then in a worker thread: the TLS context
    (``make_context``: a process-wide shared one, or this client's own when it presents a
    client certificate) at the first ``https://`` request, so a plain ``http://`` endpoint
    never loads a CA bundle; one transport (connection pool) per route, per client."""

    def __init__(
        self,
        make_context: Callable[[], ssl.SSLContext],
        proxies: ProxyEnvironment,
        built_context: Callable[[], ssl.SSLContext | None] = lambda: None,
    ) -> None:
        self.proxies = proxies
        self._make_context = make_context
        self._built_context = built_context
        self._context: ssl.SSLContext | None = None
        self._built: dict[tuple[str, str] | str, httpx.AsyncHTTPTransport] = {}
        self._lock: anyio.Lock | None = None
        self._logged: set[tuple[str, str, int]] = set()

    def _build(self, route: tuple[str, str] | str) -> httpx.AsyncHTTPTransport:
        """In a worker thread: the transport of ``route`` (``"plain"``, ``"direct"`` or a
        proxy setting)."""
        if route == "plain":
            # Plain http never runs TLS on this transport (never proxied either): a context
            # that trusts no CA, so that a TLS use of it, were there one, would fail closed.
            return httpx.AsyncHTTPTransport(verify=_plain_context())
        if self._context is None:
            self._context = self._make_context()
        if route == "direct":
            return httpx.AsyncHTTPTransport(verify=self._context)
        assert isinstance(route, tuple)
        return _proxy_transport(*route, self._context)

    async def _transport(self, route: tuple[str, str] | str) -> httpx.AsyncHTTPTransport:
        transport = self._built.get(route)
        if transport is None:
            if self._lock is None:
                self._lock = anyio.Lock()
            async with self._lock:  # one build per route, however many requests wait
                transport = self._built.get(route)
                if transport is None:
                    if self._ready(route):  # nothing expensive left: no thread hop
                        transport = self._build(route)
                    else:
                        transport = await anyio.to_thread.run_sync(self._build, route)
                    self._built[route] = transport
        return transport

    def _ready(self, route: tuple[str, str] | str) -> bool:
        """Whether building ``route`` is cheap now: httpcore imported (httpx imports it at
        the first transport) and the context it needs already made by the process."""
        if "httpcore" not in sys.modules:
            return False
        if route == "plain":
            return ("plain",) in _SHARED_CONTEXTS
        if self._context is None:
            self._context = self._built_context()
        return self._context is not None

    def route(self, url: httpx.URL) -> tuple[str, str] | str:
        if url.scheme != "https":
            return "plain"
        return self.proxies.proxy_for(url) or "direct"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return await (await self._transport("plain")).handle_async_request(request)
        setting = self.proxies.proxy_for(request.url)
        if setting is None:
            return await (await self._transport("direct")).handle_async_request(request)
        origin = (request.url.scheme, request.url.host, request.url.port or 443)
        if origin not in self._logged:
            self._logged.add(origin)
            logger.info(
                "requests to %s://%s:%d go through the proxy %s (from %s; TLS end to end)",
                *origin,
                shown_proxy(setting[1]),
                setting[0],
            )
        return await (await self._transport(setting)).handle_async_request(request)

    async def aclose(self) -> None:
        transports, self._built = list(self._built.values()), {}
        for transport in transports:
            await transport.aclose()


async def prepare_client(client: httpx.AsyncClient, url: str) -> None:
    """Build, in a worker thread, what a request to ``url`` with ``client`` (one
    :func:`build_client` made) needs: its transport and TLS context. A client built
    elsewhere is left alone. The errors of a context that cannot be made (an unloadable
    ``SSL_CERT_FILE``, a client certificate that no longer loads) are raised as they are."""
    routes = getattr(client, "_transport", None)
    if isinstance(routes, _Routes):
        await routes._transport(routes.route(httpx.URL(url)))


# -- TLS contexts shared by the whole process ---------------------------------------------------
#
# Building an SSLContext and loading a CA bundle costs ~20 ms warm and ~100 ms cold: once per
# process per trust configuration, in a worker thread, not once per manager on the event loop.
# The key is the whole configuration (verify=True and the CA source it resolved to, "system",
# a CA file or directory with its version, False), so different configurations never share a
# context. A context that presents a client certificate is never cached nor shared: it is
# built for its client (mtls.ClientCertificate._context_for), from a fresh verification context.
# Only contexts the library made and never hands out for modification are shared; the
# connection pools are not (each client has its own: its proxies, limits and trust).

_SHARED_CONTEXTS: dict[Hashable, ssl.SSLContext] = {}
_SHARED_LOCK = threading.Lock()


def _version(path: str) -> tuple[int, int]:
    """A CA file's (or directory's) version: a rotated bundle is another configuration."""
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return (status.st_mtime_ns, status.st_size)


def _plain_context() -> ssl.SSLContext:
    return _shared(("plain",), lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def _shared(key: Hashable, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = _SHARED_CONTEXTS.get(key)
    if context is None:
        with _SHARED_LOCK:  # held in a worker thread (or at construction), never awaited
            context = _SHARED_CONTEXTS.get(key)
            if context is None:
                context = build()
                _SHARED_CONTEXTS[key] = context
    return context


def _insecure_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _shared_entry(
    verify: Any, default: tuple[str, str] | None
) -> tuple[Hashable, Callable[[], ssl.SSLContext]]:
    """The cache key of ``verify=`` (True, False, "system", a path) and how to build it."""
    if verify is True:
        source = default or default_trust()
        return ("default", *source, _version(source[1])), lambda: _load_default(source)
    if verify is False:
        return ("insecure",), _insecure_context
    if verify == "system":
        try:
            import truststore  # noqa: F401 - without it, the MissingExtraError, cached or not
        except ImportError:
            raise MissingExtraError("truststore", "truststore") from None
        return ("system",), lambda: _context_of(tls_verification("system"))
    path = os.path.realpath(os.fspath(verify))
    return ("ca", path, _version(path)), lambda: _context_of(tls_verification(verify))


def shared_verification(verify: Any, default: tuple[str, str] | None = None) -> ssl.SSLContext:
    """The process-wide context for ``verify=`` (as :func:`tls_verification` takes it), built
    on first use and cached per configuration; an ``ssl.SSLContext`` is returned as it is.
    ``default``: what ``verify=True`` resolved to (:func:`default_trust`), read once by the
    caller. Blocking (it may load a CA bundle): call it in a worker thread."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if _shareable(verify):
        return _shared(*_shared_entry(verify, default))
    return _context_of(tls_verification(verify))  # the ConfigurationError of a bad value


def cached_verification(verify: Any, default: tuple[str, str] | None = None) -> ssl.SSLContext | None:
    """The shared context of ``verify=`` if the process has built it already, else ``None``
    (nothing is built: cheap, for the event loop)."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if _shareable(verify):
        return _SHARED_CONTEXTS.get(_shared_entry(verify, default)[0])
    return None


def _shareable(verify: Any) -> bool:
    """Whether ``verify=`` names a configuration the process shares one context for."""
    return verify is True or verify is False or verify == "system" or isinstance(verify, str | os.PathLike)


def _context_of(verification: ssl.SSLContext | bool) -> ssl.SSLContext:
    assert isinstance(verification, ssl.SSLContext)
    return verification


def default_trust() -> tuple[str, str]:
    """Which CAs ``verify=True`` trusts, as ``(source, path)``, read from the environment now:
    ``SSL_CERT_FILE`` if set, else ``SSL_CERT_DIR`` if set, else certifi's bundle (what httpx
    does; the variables *replace* certifi, they do not add to it). Nothing is loaded."""
    cafile = os.environ.get("SSL_CERT_FILE", "")
    if cafile:
        return "SSL_CERT_FILE", os.path.realpath(cafile)
    capath = os.environ.get("SSL_CERT_DIR", "")
    if capath:
        return "SSL_CERT_DIR", os.path.realpath(capath)
    import certifi

    return "certifi", certifi.where()


def _load_default(source: tuple[str, str]) -> ssl.SSLContext:
    from .errors import ConfigurationError

    variable, path = source
    try:
        if variable == "SSL_CERT_DIR":
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        if variable == "certifi":
            raise
        raise ConfigurationError(f"cannot load the CA certificates named by {variable}: {exc}") from None


def default_ssl_context() -> tuple[ssl.SSLContext, tuple[str, ...]]:
    """A new context of what ``verify=True`` trusts (:func:`default_trust`), and a key
    naming it. Blocking: it loads the CA bundle."""
    source = default_trust()
    return _load_default(source), source


def tls_verification(verify: Any) -> ssl.SSLContext | bool:
    """What ``verify=`` may be (docs/security.md, "Which CAs are trusted"):

    - ``True`` (the default): certifi's CA bundle, or the CA file ``SSL_CERT_FILE`` names,
      else the CA directory ``SSL_CERT_DIR`` names (they replace certifi; read when the
      HTTP client is built), as httpx does;
    - ``"system"``: the operating system's trust store, through ``truststore``
      (``pip install 'keyless-m2m[truststore]'``): the platform verifier on macOS and
      Windows, OpenSSL's system locations on Linux;
    - a CA bundle file or a directory of CA certificates (``str`` or ``os.PathLike``; a
      file named ``system`` is ``./system``);
    - an ``ssl.SSLContext``;
    - ``False``: no verification, for tests against a self-signed loopback server only.
    """
    from .errors import ConfigurationError

    if verify is True or verify is False or isinstance(verify, ssl.SSLContext):
        return verify
    if verify == "system":
        try:
            import truststore
        except ImportError:
            raise MissingExtraError("truststore", "truststore") from None
        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if isinstance(verify, str | os.PathLike):
        path = os.fspath(verify)
        try:
            if os.path.isdir(path):
                return ssl.create_default_context(capath=path)
            return ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            name = os.path.basename(path) or path
            raise ConfigurationError(f"cannot load CA certificates from {name!r}: {exc}") from None
    raise ConfigurationError('verify must be True, "system", False, a CA bundle path or an ssl.SSLContext')


class _PresentsCertificate(Protocol):
    def _context_for(self, verification: ssl.SSLContext | bool) -> ssl.SSLContext: ...


def build_client(
    *,
    timeout: float,
    verify: Any,
    trust: Hashable,
    client_certificate: _PresentsCertificate | None = None,
) -> tuple[httpx.AsyncClient, Hashable]:
    """The client the token endpoint and discovery use, and the key of everything that
    decides whom it believes (``trust``: the configured ``verify=``; the CAs ``verify=True``
    resolved to; the proxy settings). No redirects; httpx's environment reading is off.

    ``verify`` is the option as given (``True``, ``False``, ``"system"``, a CA path, an
    ``ssl.SSLContext``). Cheap, and safe on the event loop: the TLS context is made at the
    first ``https://`` request, in a worker thread, and shared by the process per trust
    configuration (:func:`shared_verification`). ``client_certificate`` (a
    :class:`~keyless_m2m.mtls.ClientCertificate`): every TLS connection presents it
    (RFC 8705), from a context made for this client only, never a shared one."""
    key: Hashable = trust
    default: tuple[str, str] | None = None
    if verify is True:
        default = default_trust()  # the environment is read now, as the trust key says
        key = ("default", default)
    make_context: Callable[[], ssl.SSLContext]
    if client_certificate is not None:
        certificate = client_certificate

        def make_context() -> ssl.SSLContext:
            # A fresh verification context (tls_verification builds a new one for a path or
            # "system"; True/False are built by _context_for): the certificate is loaded into
            # it, so it must never be a shared one.
            return certificate._context_for(tls_verification(verify))

    else:

        def make_context() -> ssl.SSLContext:
            return shared_verification(verify, default)

        def built_context() -> ssl.SSLContext | None:
            return cached_verification(verify, default)

    proxies = ProxyEnvironment.read()
    check_proxies(proxies)  # an unusable proxy setting: refused now, not at the first request
    routes = _Routes(make_context, proxies, built_context if client_certificate is None else lambda: None)
    client = httpx.AsyncClient(timeout=timeout, transport=routes, follow_redirects=False, trust_env=False)
    return client, (key, proxies)
