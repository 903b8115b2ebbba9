"""One token request: the HTTP POST, its retries, and the response's validation.

:class:`TokenEndpoint` turns a client-credentials request into an
:class:`~keyless_m2m.AccessToken` or a typed error. It retries what may succeed later
(network errors, 5xx, 429, ``temporarily_unavailable``) with exponential backoff and
jitter, honours ``Retry-After``, and stops at ``max_attempts`` or ``deadline`` (one
policy: :mod:`keyless_m2m._retry`). Every attempt carries fresh client credentials: a new
assertion, a new ``jti``.

Bounds: ``deadline`` is a cancel scope around the whole request (discovery, every
attempt's signing and HTTP exchange, and the pauses between attempts); ``timeout`` is one
around each HTTP exchange (connect, send, headers and body together), so a server that
trickles a byte at a time cannot hold a request past either. Whatever the server sends,
only a :class:`~keyless_m2m.KeylessM2MError` comes out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Generator,
    Hashable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from time import monotonic
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import anyio.lowlevel
import httpx

from . import _telemetry
from ._http import (
    ACCEPT_ENCODING,
    BodyError,
    ProxyEnvironment,
    build_client,
    check_proxies,
    is_loopback_host,
    prepare_client,
    read_body,
    shared_verification,
    tls_verification,
    transport_failure,
)
from ._retry import RetryPolicy
from ._secret import Redactor, Secret, reveal, scrubbing_http_logs
from .client_auth import ClientAuth, PreparedAuth, PrivateKeyJWT
from .dpop import DPoPKey, dpop_key_of, is_valid_nonce
from .errors import (
    AssertionSourceError,
    ConfigurationError,
    InvalidClientError,
    InvalidTokenResponseError,
    KeylessM2MError,
    RefusedWithoutReasonError,
    SigningError,
    TokenRequestError,
    TransportError,
    error_for_oauth_code,
)
from .mtls import ClientCertificate
from .signers import Signer
from .stats import EndpointStats, TokenStats
from .token import DPOP, AccessToken, utc_now

__all__ = [
    "TokenEndpoint",
    "TokenStats",
    "is_loopback_url",
    "parse_http_date",
    "parse_retry_after",
    "tls_verification",
]

logger = logging.getLogger("keyless_m2m")

MAX_EXPIRES_IN = 366 * 24 * 3600  # longer than a year is a broken server, not a token
_MAX_DESCRIPTION = 300


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def shown_url(url: str) -> str:
    """``url`` as it may appear in a message: whatever could be ``user:password@`` (from
    after the scheme to the last ``@``) is replaced, however malformed the URL is."""
    at = url.rfind("@")
    if at < 0:
        return url
    scheme, sep, _ = url.partition(":")
    start = len(scheme) + len(sep) if sep and scheme.isascii() and scheme.isalnum() else 0
    while start < at and url[start] in "/\\":
        start += 1
    return url[:start] + "<credentials hidden>@" + url[at + 1 :]


def check_endpoint_url(url: str, *, allow_insecure_http: bool, what: str = "token endpoint") -> str:
    """``url`` if it may receive credentials, else a :class:`~keyless_m2m.ConfigurationError`
    (whose message never shows a ``user:password@`` part, see :func:`shown_url`)."""
    if not isinstance(url, str):
        raise ConfigurationError(f"{what} must be a URL string")
    if not url.isprintable() or " " in url:  # the one printable white-space character
        raise ConfigurationError(f"{what} must not contain spaces or control characters")
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    if "@" in authority:
        # Refused before any parsing, so that no later message (a bad port, a wrong
        # scheme) can echo the password; those messages show shown_url(url) anyway.
        raise ConfigurationError(
            f"{what} must not carry credentials (user:password@): they would show in logs and "
            "errors; use ClientSecretBasic or ClientSecretPost"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        httpx.URL(url)  # what httpx will refuse at request time (bad IDNA, brackets, ...)
    except (ValueError, httpx.InvalidURL) as exc:  # UnicodeError (IDNA) is a ValueError
        raise ConfigurationError(
            f"{what} is not a valid URL ({type(exc).__name__}): {shown_url(url)!r}"
        ) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"{what} must be an absolute https:// URL, got {shown_url(url)!r}")
    if parts.fragment:
        raise ConfigurationError(f"{what} must not have a #fragment")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"{what} must not carry credentials (user:password@): they would show in logs and "
            "errors; use ClientSecretBasic or ClientSecretPost"
        )
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_url(url):
        raise ConfigurationError(
            f"refusing plain http:// for the {what} {url!r}: credentials would travel in "
            "clear text (http is allowed for loopback hosts; pass allow_insecure_http=True "
            "to override)"
        )
    return url


def parse_http_date(value: str) -> datetime | None:
    """An HTTP-date (``Date``, ``Retry-After``) as an aware UTC datetime, or ``None``."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def clock_skew_of(date_header: str | None, local: datetime) -> float | None:
    """The server's clock minus ours, in seconds, from an answer's ``Date`` header read at
    ``local`` (``None`` without a usable one; the header has a one-second resolution)."""
    server = parse_http_date(date_header) if date_header else None
    if server is None:
        return None
    skew = (server - local).total_seconds()
    return skew if math.isfinite(skew) else None


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, server_date: str | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    An HTTP-date is read relative to the response's ``Date`` header when ``server_date``
    is given and valid (RFC 9110 section 10.2.3), so a server whose clock is off by
    minutes still gets the pause it asked for; otherwise relative to ``now`` (the local
    clock). The result is capped at 24 hours; ``None`` means "no usable value".
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true for "²"
        digits = value.lstrip("0") or "0"  # int() refuses more than 4300 digits
        return float(min(int(digits), 24 * 3600)) if len(digits) <= 12 else 24 * 3600.0
    when = parse_http_date(value)
    if when is None:
        return None
    reference = parse_http_date(server_date.strip()) if server_date else None
    delta = (when - (reference or now or datetime.now(UTC))).total_seconds()
    return max(0.0, min(delta, 24 * 3600.0))


def _client_certificate_for(client_auth: ClientAuth, given: object, verify: Any) -> ClientCertificate | None:
    """The certificate the token endpoint's connections present (RFC 8705): the client
    authentication's (``TlsClientAuth``), or ``client_certificate=`` for certificate-bound
    tokens with another method; checked against ``verify=``."""
    if given is not None and not isinstance(given, ClientCertificate):
        raise ConfigurationError("client_certificate must be a keyless_m2m.mtls.ClientCertificate")
    own = getattr(client_auth, "client_certificate", None)
    own = own if isinstance(own, ClientCertificate) else None
    if own is not None and given is not None and given is not own:
        raise ConfigurationError(
            f"{type(client_auth).__name__} presents its own certificate: do not pass client_certificate= too"
        )
    certificate = own or given
    if certificate is None:
        return None
    if isinstance(verify, ssl.SSLContext) and verify is not certificate.ssl_context:
        raise ConfigurationError(
            "verify= is an ssl.SSLContext and the client certificate is files: load the certificate "
            "into your context (context.load_cert_chain(...)) and pass ClientCertificate(ssl_context=context)"
        )
    if certificate.ssl_context is not None and verify is not True and verify is not certificate.ssl_context:
        raise ConfigurationError(
            "the client certificate is an ssl_context you built, which decides whom the connection "
            "trusts: do not pass verify= as well"
        )
    return certificate


def _trust_of(verify: Any, verification: ssl.SSLContext | bool) -> Hashable:
    """What decides whom a client built with ``verify=`` believes, as a cache key: the same
    file or directory, the system store, or the same ``SSLContext`` object."""
    if verify is True or verify is False or verify == "system":
        return ("verify", verify)
    if isinstance(verify, str | os.PathLike):
        return ("ca", os.path.realpath(os.fspath(verify)))
    return ("context", verification)


def _encode_form(pairs: Sequence[tuple[str, str | Secret[str]]]) -> bytes:
    # Reveals the secrets only here, in a frame that returns (or fails inside the guarded
    # HTTP exchange, whose exceptions are dropped): no raised error's traceback holds it.
    return urlencode([(name, reveal(value)) for name, value in pairs]).encode("ascii")


class _FormBody(httpx.AsyncByteStream):
    """The form body, encoded when httpx writes it: until then the credentials in it stay
    :class:`~keyless_m2m._secret.Secret`. ``length`` goes in ``Content-Length``.

    The request's stream itself (``request.stream``), not ``content=``: httpx would wrap
    an async iterable in an async generator of its own, and an async generator that a
    failed send leaves unfinished is finalized by the garbage collector (trio then warns,
    in whatever code runs at that moment). Its iterator is a plain object."""

    __slots__ = ("_pairs", "length")

    def __init__(self, pairs: Sequence[tuple[str, str | Secret[str]]]) -> None:
        self._pairs = tuple(pairs)
        self.length = len(_encode_form(self._pairs))

    def __repr__(self) -> str:
        return f"<form body, {self.length} bytes>"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self._pairs)


class _OneChunk:
    """The encoded form, once; not an async generator (see :class:`_FormBody`)."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: tuple[tuple[str, str | Secret[str]], ...] | None) -> None:
        self._pairs = pairs

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        pairs, self._pairs = self._pairs, None
        if pairs is None:
            raise StopAsyncIteration
        return _encode_form(pairs)


class _CredentialHeaders(httpx.Auth):
    """Sets the client's credential headers (``Authorization: Basic ...``) as httpx sends
    the request, so no frame of ours holds them as text."""

    def __init__(self, headers: Mapping[str, str | Secret[str]]) -> None:
        self._headers = dict(headers)

    def __repr__(self) -> str:
        return f"<credential headers {', '.join(self._headers)}>"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for name, value in self._headers.items():
            request.headers[name] = reveal(value)
        yield request


class _Retry(Exception):
    def __init__(self, error: KeylessM2MError, retry_after: float | None) -> None:
        self.error = error
        self.retry_after = retry_after


@dataclass(slots=True)
class _Progress:
    """Where a request is, for the message of a deadline or timeout that cuts it short."""

    step: str = "starting"
    attempt: int = 0
    last_error: KeylessM2MError | None = field(default=None)
    nonce_retried: bool = False  # the one use_dpop_nonce retry of a request
    nonce_error: TokenRequestError | None = field(default=None)


class _NewNonce(Exception):
    """The server asked for a DPoP nonce and gave one (see _attempts)."""


class _Refused(Exception):
    """The server refused credentials the client has another form of (see _attempts)."""

    def __init__(self, error: TokenRequestError) -> None:
        super().__init__(error.error)
        self.error = error


def _refuses_client(error: TokenRequestError) -> bool:
    """A refusal of the client's credentials (RFC 6749 section 5.2 ``invalid_client``, or a
    refusal that gives no reason), as opposed to one of the request."""
    return not error.retryable and (isinstance(error, InvalidClientError | RefusedWithoutReasonError))


def _number(name: str, value: Any, *, zero_ok: bool = False) -> float:
    """A finite, positive (or zero) number of seconds, else a ``ConfigurationError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero_ok):
        sign = "non-negative" if zero_ok else "positive"
        raise ConfigurationError(f"{name} must be a finite {sign} number")
    return number


_TOKEN_TYPE = re.compile(r"[A-Za-z0-9._~+/-]+")  # RFC 6749 section 7.1 names: token68-like


def _token_types(value: Any) -> frozenset[str]:
    """``accept_token_types``: a collection of names, lowercased; never a lone string
    (its letters would each be a name), never DPoP."""
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ConfigurationError('accept_token_types must be a collection of names, e.g. ("access_token",)')
    names = set()
    for name in value:
        if not isinstance(name, str) or not _TOKEN_TYPE.fullmatch(name):
            raise ConfigurationError("accept_token_types holds token_type names (letters, digits, ._~+/-)")
        if name.lower() == "dpop":
            raise ConfigurationError(
                "accept_token_types cannot accept DPoP: DPoP-bound tokens need a proof with every "
                "use; set dpop=True (an ephemeral key) or dpop=<a Signer> instead"
            )
        names.add(name.lower())
    return frozenset(names)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer of at least 1, got {value!r:.40}")
    return value


class TokenEndpoint:
    """The token endpoint of one authorization server, for one client.

    >>> endpoint = TokenEndpoint("https://auth.example/oauth2/token", auth)
    >>> token = await endpoint.request(scope="pockets.read")

    Options: ``http_client`` (an ``httpx.AsyncClient`` you own; otherwise one is created
    with ``timeout`` and ``verify`` and closed by :meth:`aclose`), ``timeout`` (10 s for
    one HTTP exchange: connect, send, headers and body together; also httpx's timeout for
    each operation of the client created here), ``max_attempts`` (4), ``deadline`` (30 s
    for the whole :meth:`request`: discovery, signing, every attempt and the pauses between
    them), ``backoff`` (first delay, 0.5 s, doubling up to ``max_backoff`` 10 s, with
    jitter in [50 %, 100 %]; see :class:`~keyless_m2m._retry.RetryPolicy`),
    ``default_expires_in`` (300 s, used when the response has no ``expires_in``),
    ``accept_token_types`` (``token_type`` values besides ``Bearer`` to take as Bearer,
    compared case-insensitively, e.g. ``("access_token",)`` for a server that names its
    Bearer tokens so; never ``DPoP``), ``dpop`` (``True``: DPoP proofs, RFC 9449, from an
    ephemeral key; a :class:`~keyless_m2m.signers.Signer` or a
    :class:`~keyless_m2m.dpop.DPoPKey`: from that key; see :mod:`keyless_m2m.dpop`),
    ``max_response_bytes`` (256 KiB, decoded), ``allow_insecure_http`` (plain http:// for
    a non-loopback host). A wrong type or value is a
    :class:`~keyless_m2m.ConfigurationError`.

    Transport security: ``https://`` is required except for loopback hosts (unless
    ``allow_insecure_http=True``); TLS certificates are verified against the system CAs,
    or against ``verify=`` (a CA bundle path, a CA directory or an ``ssl.SSLContext``; see
    :func:`tls_verification`); redirects are never followed, even when the
    ``http_client`` you pass follows them elsewhere: a 3xx answer is an
    :class:`~keyless_m2m.InvalidTokenResponseError`, so credentials are only ever posted
    to the configured URL. Mutual TLS (RFC 8705, docs/mtls.md): the client certificate of
    a ``TlsClientAuth`` / ``SelfSignedTlsClientAuth``, or ``client_certificate=`` (a
    :class:`~keyless_m2m.mtls.ClientCertificate`, for certificate-bound tokens with any
    method), is presented on every connection of the client built here; an
    ``http_client`` you pass must present it itself (``verify=client_ssl_context(...)``).
    Only ``gzip`` and ``deflate`` (one layer) are accepted as
    content codings, decoded with the size cap applied as they stream.
    """

    def __init__(
        self,
        url: str,
        client_auth: ClientAuth,
        *,
        http_client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        verify: Any = True,
        max_attempts: int = 4,
        deadline: float = 30.0,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        default_expires_in: float = 300.0,
        accept_token_types: Collection[str] = (),
        max_response_bytes: int = 256 * 1024,
        allow_insecure_http: bool = False,
        dpop: bool | Signer | DPoPKey | None = None,
        stats: EndpointStats | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        client_certificate: ClientCertificate | None = None,
    ) -> None:
        if not isinstance(allow_insecure_http, bool):
            raise ConfigurationError("allow_insecure_http must be True or False")
        self.url = check_endpoint_url(url, allow_insecure_http=allow_insecure_http)
        if not isinstance(client_auth, ClientAuth):
            raise ConfigurationError("client_auth must be PrivateKeyJWT, ClientSecretBasic, ...")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError("http_client must be an httpx.AsyncClient")
        if stats is not None:
            warnings.warn(
                "TokenEndpoint(stats=...) is deprecated and ignored: the endpoint counts on its own; "
                "read endpoint.stats (a snapshot)",
                DeprecationWarning,
                stacklevel=2,
            )
        if not callable(sleep):
            raise ConfigurationError("sleep must be an async callable")
        self.client_auth = client_auth
        self.dpop = dpop_key_of(dpop)
        self._warned_unbound = False
        self.max_attempts = _count("max_attempts", max_attempts)
        self.deadline = _number("deadline", deadline)
        self.backoff = _number("backoff", backoff, zero_ok=True)
        self.max_backoff = _number("max_backoff", max_backoff, zero_ok=True)
        self.default_expires_in = _number("default_expires_in", default_expires_in)
        self.accept_token_types = _token_types(accept_token_types)
        self.max_response_bytes = _count("max_response_bytes", max_response_bytes)
        self.timeout = _number("timeout", timeout)
        # True/False stay as they are (the CA bundle is loaded at the first https request,
        # in a worker thread); a CA path or "system" is loaded now, so that a bad one is an
        # error at once, into the context the whole process shares for it.
        self.verify = verify if verify is True or verify is False else shared_verification(verify)
        self._verify_option = verify
        self.client_certificate = _client_certificate_for(client_auth, client_certificate, verify)
        if (
            getattr(client_auth, "profile", None) == "fapi2"
            and self.dpop is None
            and self.client_certificate is None
        ):
            # FAPI 2.0 section 5.3.2.2: the client must use sender-constrained tokens.
            raise ConfigurationError(
                "profile='fapi2' needs sender-constrained tokens (FAPI 2.0 section 5.3.2.2): pass "
                "dpop=True (or dpop=<a Signer>: DPoP, RFC 9449) or client_certificate= (mutual TLS, "
                "RFC 8705)"
            )
        self.issuer: str | None = None  # the issuer identifier, when known (discovery)
        # The server refused an assertion whose aud was the issuer and took one whose aud
        # was this URL (PrivateKeyJWT's audience_policy="auto"): keep sending that form.
        self.audience_fallback = False
        # The server's clock minus ours (its Date headers): assertions may take iat from it.
        self.clock_skew: float | None = None
        self._requests = 0  # HTTP attempts sent
        self._proofs = 0  # DPoP proofs signed for token requests
        self._signatures = 0  # client assertions signed
        self._sleep = sleep
        self._http = http_client
        self._owns_http = http_client is None
        self._trust = _trust_of(verify, self.verify)
        if self.client_certificate is not None and self.client_certificate.ssl_context is not None:
            self._trust = ("context", self.client_certificate.ssl_context)
        # Whom the client believes (verify, the CAs, proxies): None for a client you pass,
        # whose settings cannot be read; set when the client is built.
        self._trust_key: Hashable | None = None
        self._prepared: httpx.AsyncClient | None = None  # the client prepare() last made ready
        if self._owns_http:
            check_proxies(ProxyEnvironment.read())  # a SOCKS proxy without socksio: say so now

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.url!r}, client_auth={self.client_auth!r})"

    @property
    def retry_policy(self) -> RetryPolicy:
        """The attempts, backoff and time budget of :meth:`request`."""
        return RetryPolicy(self.max_attempts, self.backoff, self.max_backoff, self.deadline)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # Built by keyless_m2m._http: its CAs, no redirects, and the proxy policy (plain
            # http never through a proxy; see docs/security.md, "Proxies").
            self._http, self._trust_key = build_client(
                timeout=self.timeout,
                verify=self._verify_option,
                trust=self._trust,
                client_certificate=self.client_certificate,
            )
        return self._http

    async def prepare(self) -> None:
        """Build the HTTP client this endpoint owns and what its requests to :attr:`url`
        need (the transport; for ``https://`` the TLS context, shared by the process per
        trust configuration), in a worker thread, now rather than at the first request.
        ``TokenManager.__aenter__`` calls it; requests do it anyway. Nothing for an
        ``http_client`` you passed. Raises :class:`~keyless_m2m.ConfigurationError` when the
        TLS context cannot be made (a CA file that no longer loads, a client certificate)."""
        if self._owns_http:
            client = self._client()
            if self._prepared is not client:  # once per client, not per attempt
                await prepare_client(client, self.url)
                self._prepared = client

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            http, self._http, self._prepared = self._http, None, None
            await http.aclose()

    def form_for(
        self,
        scope: str | None,
        resource: Sequence[str] = (),
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> list[tuple[str, str]]:
        form: list[tuple[str, str]] = [("grant_type", "client_credentials")]
        if scope:
            form.append(("scope", scope))
        form.extend(("resource", r) for r in resource)
        if audience:
            form.append(("audience", audience))
        if extra_params:
            form.extend((str(k), str(v)) for k, v in extra_params.items())
        return form

    @property
    def stats(self) -> EndpointStats:
        """A snapshot of what this endpoint sent (:class:`~keyless_m2m.stats.EndpointStats`)."""
        return EndpointStats(requests=self._requests, signatures=self._signatures, dpop_proofs=self._proofs)

    async def request(
        self,
        *,
        scope: str | None = None,
        resource: Sequence[str] = (),
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> AccessToken:
        """Get one token, retrying what may succeed later. Raises a ``KeylessM2MError``;
        a request that runs past ``deadline`` raises ``TransportError(reason="deadline")``."""
        base_form = self.form_for(scope, resource, audience, extra_params)
        progress = _Progress()
        with anyio.move_on_after(self.deadline) as budget:
            return await self._attempts(base_form, scope, progress, budget)
        raise self._deadline_error(progress)

    def _deadline_error(self, progress: _Progress) -> TransportError:
        text = (
            f"the token request to {self.url} did not finish within deadline={self.deadline:g}s: "
            f"it was {progress.step}"
        )
        if progress.attempt:
            text += f" (attempt {progress.attempt} of at most {self.max_attempts})"
        if progress.last_error is not None:
            last = progress.last_error
            text += f"; the attempt before failed with {type(last).__name__}: {last}"
        return TransportError(text, reason="deadline")

    async def _prepare(self, progress: _Progress) -> None:
        """What must happen before the first attempt, inside the deadline (discovery)."""

    async def _attempts(
        self,
        base_form: list[tuple[str, str]],
        scope: str | None,
        progress: _Progress,
        budget: anyio.CancelScope,
    ) -> AccessToken:
        await self._prepare(progress)
        policy = self.retry_policy
        attempt = 0
        first_refusal: TokenRequestError | None = None  # of the issuer form, if it fell back
        while True:
            attempt += 1
            progress.attempt = attempt
            try:
                token = await self._attempt(base_form, scope, progress)
            except _NewNonce:
                # use_dpop_nonce (RFC 9449 section 8): once per request, at once, with the
                # nonce the server just gave; not an attempt of its own.
                if progress.nonce_retried and progress.nonce_error is not None:
                    progress.nonce_error.add_hint(
                        "it asked for a DPoP nonce again after the proof carried the one it gave"
                    )
                    raise progress.nonce_error from None
                progress.nonce_retried = True
                attempt -= 1
                continue
            except _Refused as refused:
                # The other audience form, at once and once: the server answered, so this
                # is not a retry of the same request and does not count as an attempt.
                logger.info(
                    "token endpoint %s refused the assertion with aud = the issuer identifier "
                    "(%s); trying aud = the token endpoint URL",
                    self.url,
                    refused.error.error,
                )
                self.audience_fallback = True
                first_refusal = refused.error
                attempt -= 1
                continue
            except TokenRequestError as refusal:
                if first_refusal is not None and _refuses_client(refusal):
                    said = f": {first_refusal.error_description}" if first_refusal.error_description else ""
                    refusal.add_hint(
                        f"with aud = the issuer identifier it was refused as {first_refusal.error}{said}"
                    )
                raise
            except _Retry as retry:
                error, retry_after = retry.error, retry.retry_after
            except (SigningError, AssertionSourceError) as exc:
                if not exc.retryable:
                    raise
                error, retry_after = exc, None
            else:
                if first_refusal is not None:
                    logger.warning(
                        "token endpoint %s accepts client assertions with aud = its token endpoint URL, "
                        "not the issuer identifier (rfc7523bis); this endpoint keeps sending that form "
                        "(PrivateKeyJWT(audience_policy='token_endpoint') skips the first try)",
                        self.url,
                        extra={"leniency": True},  # shown by the CLI without --verbose
                    )
                return token
            progress.last_error = error
            delay = policy.next_delay(attempt, retry_after, budget.deadline - anyio.current_time())
            if delay is None:
                raise error
            # The cause with each retry: the typed error's message, secret-free like every
            # message of ours (the server's text was scrubbed of what was sent).
            logger.info(
                "token request to %s failed (%s: %s), retry %d/%d in %.2fs",
                self.url,
                type(error).__name__,
                error,
                attempt,
                self.max_attempts - 1,
                delay,
            )
            _telemetry.retrying(attempt, error, delay)
            progress.step = f"pausing {delay:.2f}s before the next attempt"
            await self._sleep(delay)

    async def _attempt(
        self, base_form: list[tuple[str, str]], scope: str | None, progress: _Progress
    ) -> AccessToken:
        # The transport and TLS context, off the loop (once), before any credential exists
        # in this frame: a ConfigurationError raised here holds none.
        progress.step = "building the HTTP client (TLS context, in a worker thread)"
        await self.prepare()
        progress.step = "waiting for client authentication (the signer)"
        prepared = await self._credentials()
        if prepared.signed:
            self._signatures += 1
        headers: dict[str, str | Secret[str]] = dict(prepared.headers)
        if self.dpop is not None:
            progress.step = "waiting for the DPoP proof (the DPoP key's signer)"
            headers["DPoP"] = await self.dpop.proof("POST", self.url, clock_skew=self.clock_skew)
            self._proofs += 1
        # Secret values stay wrapped until httpx writes them (_FormBody, _CredentialHeaders);
        # everything the server says back is scrubbed of every form of them (redactor).
        redactor = Redactor.from_sent(prepared.form, headers)
        form: list[tuple[str, str | Secret[str]]] = [*base_form, *prepared.form.items()]
        # One pass of the loop, between making the credentials and sending them: the first
        # fetches of many managers start in the same pass, and each one's signing and
        # request start together are most of a millisecond of CPU (cold); without this,
        # twenty of them stall every other task of the process for their sum.
        await anyio.lowlevel.checkpoint()
        self._requests += 1
        started = monotonic()
        started_wall = utc_now()
        logger.debug("token request to %s (%s)", self.url, self.client_auth.method)
        failure: tuple[str, str, bool] | None = None
        with anyio.move_on_after(self.timeout) as exchange:
            try:
                status, response_headers, body = await self._post(form, headers, redactor, progress)
            except Exception as exc:  # every failure of the exchange becomes typed
                # Keep only the kind: httpx exceptions hold the request, and its body the
                # credentials; the error is raised outside this block, so no chain either.
                failure = transport_failure(exc, urlsplit(self.url).hostname or "")
        if exchange.cancelled_caught:
            error = TransportError(
                f"no complete answer from the token endpoint {self.url} within timeout={self.timeout:g}s "
                f"(it was {progress.step})",
                reason="timeout",
            )
            raise _Retry(error, None)
        if failure is not None:
            reason, what, retryable = failure
            error = TransportError(
                f"cannot reach the token endpoint {self.url}: {what}", reason=reason, retryable=retryable
            )
            if not retryable:
                raise error
            raise _Retry(error, None)
        logger.debug("token endpoint answered HTTP %d in %.3fs", status, monotonic() - started)
        skew = clock_skew_of(response_headers.get("date"), started_wall)
        if skew is not None:
            self.clock_skew = skew
        nonce = response_headers.get("dpop-nonce") if self.dpop is not None else None
        if nonce is not None and is_valid_nonce(nonce):
            self.dpop.remember_nonce(self.url, nonce)  # type: ignore[union-attr]
        try:
            return self._parse(status, response_headers, body, scope, started_wall, redactor)
        except TokenRequestError as error:
            if error.error == "use_dpop_nonce" and self.dpop is not None:
                if nonce is None or not is_valid_nonce(nonce):
                    error.add_hint(
                        "the server asked for a DPoP nonce without a valid DPoP-Nonce header "
                        "(RFC 9449 section 8), so there is none to send"
                    )
                    raise
                progress.nonce_error = error
                raise _NewNonce from None
            if not _refuses_client(error):
                raise
            if prepared.alternative and not self.audience_fallback:
                raise _Refused(error) from None
            if prepared.hint is not None:
                error.add_hint(prepared.hint)
            self.audience_fallback = False  # refused in that form too: the issuer first next time
            raise

    async def _credentials(self) -> PreparedAuth:
        auth = self.client_auth
        if isinstance(auth, PrivateKeyJWT):
            return await auth.prepare(
                self.url, issuer=self.issuer, fallback=self.audience_fallback, clock_skew=self.clock_skew
            )
        return await auth.prepare(self.url)

    async def _post(
        self,
        form: Sequence[tuple[str, str | Secret[str]]],
        credential_headers: Mapping[str, str | Secret[str]],
        redactor: Redactor,
        progress: _Progress,
    ) -> tuple[int, httpx.Headers, bytes | BodyError]:
        client = self._client()
        content = _FormBody(form)
        headers = {
            "Accept": "application/json",
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(content.length),
            "Accept-Encoding": ACCEPT_ENCODING,  # only codings whose output we can bound
        }
        # Per request, our credential headers replace a user client's own auth (which
        # would overwrite an Authorization header); without any, the client's auth stays.
        auth: Any = _CredentialHeaders(credential_headers) if credential_headers else httpx.USE_CLIENT_DEFAULT
        progress.step = "sending the request and waiting for the response headers"
        # follow_redirects=False per request: a client given by the user may follow them,
        # and a redirected POST would carry the credentials to wherever Location points.
        with scrubbing_http_logs(redactor):  # httpx logs the reason phrase, httpcore the headers
            # content= for the request's headers and its unread state; then the stream
            # itself in place of httpx's generator wrapper (see _FormBody).
            request = client.build_request("POST", self.url, content=content, headers=headers)
            request.stream = content
            response = await client.send(request, auth=auth, follow_redirects=False, stream=True)
            try:
                progress.step = f"reading the response body (HTTP {response.status_code})"
                try:
                    body: bytes | BodyError = await read_body(response, self.max_response_bytes)
                except BodyError as exc:
                    body = exc
                return response.status_code, response.headers, body
            finally:
                await response.aclose()

    def _parse(
        self,
        status: int,
        headers: httpx.Headers,
        body: bytes | BodyError,
        scope: str | None,
        started_wall: datetime,
        redactor: Redactor,
    ) -> AccessToken:
        """Every text of the server's that reaches an error or the token goes through
        ``redactor`` here (and in :meth:`_oauth_error`, :meth:`_token_from`)."""
        retryable_status = status == 429 or status >= 500
        retry_after = (
            parse_retry_after(headers.get("retry-after"), server_date=headers.get("date"))
            if retryable_status
            else None
        )
        if isinstance(body, BodyError):
            refused = InvalidTokenResponseError(
                f"token endpoint response (HTTP {status}) refused: "
                + redactor.scrub(str(body), _MAX_DESCRIPTION),
                status_code=status,
                retryable=retryable_status,
            )
            if retryable_status:
                raise _Retry(refused, retry_after)
            raise refused
        try:
            data: Any = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None

        if isinstance(data, dict) and "error" in data:
            error = self._oauth_error(status, data, redactor)
            if error.retryable or retryable_status:
                error.retryable = True
                raise _Retry(error, retry_after)
            raise error
        if 300 <= status < 400:
            raise InvalidTokenResponseError(
                f"token endpoint answered HTTP {status} (a redirect); redirects are not followed "
                "for token requests: configure the final token endpoint URL",
                status_code=status,
            )
        if status != 200:
            kind = redactor.scrub(headers.get("content-type", "no content type").split(";")[0], 80)
            if status in (400, 401, 403):
                # A refusal all the same (a gateway's HTML, an empty 403): typed as one, not
                # as a malformed answer, and not retried.
                raise RefusedWithoutReasonError(status, kind)
            message = f"token endpoint answered HTTP {status} ({kind}) without an OAuth error"
            if retryable_status:
                raise _Retry(
                    InvalidTokenResponseError(message, status_code=status, retryable=True), retry_after
                )
            raise InvalidTokenResponseError(message, status_code=status)
        if not isinstance(data, dict):
            what = "empty" if not body else ("JSON but not an object" if data is not None else "not JSON")
            raise InvalidTokenResponseError(f"token response is {what}", status_code=status)
        return self._token_from(data, scope, started_wall, redactor)

    def _oauth_error(self, status: int, data: dict[str, Any], redactor: Redactor) -> TokenRequestError:
        code = data.get("error")
        if not isinstance(code, str) or not code:
            return TokenRequestError("invalid_error_response", status_code=status)
        description = data.get("error_description")
        uri = data.get("error_uri")
        cls = error_for_oauth_code(code)
        return cls(
            redactor.scrub(code, 64),
            status_code=status,
            error_description=redactor.scrub(description, _MAX_DESCRIPTION)
            if isinstance(description, str)
            else None,
            error_uri=redactor.scrub(uri, _MAX_DESCRIPTION) if isinstance(uri, str) else None,
        )

    def _token_from(
        self, data: dict[str, Any], scope: str | None, started_wall: datetime, redactor: Redactor
    ) -> AccessToken:
        def bad(message: str) -> InvalidTokenResponseError:
            return InvalidTokenResponseError(f"token response: {message}", status_code=200)

        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise bad("access_token is missing, empty or not a string")
        # Printable ASCII has one white-space character, the space.
        if not value.isascii() or not value.isprintable() or " " in value:
            raise bad("access_token contains characters not allowed in an HTTP header")
        token_type = self._check_token_type(data.get("token_type"), bad, redactor)
        expires_in = self._expires_in(data.get("expires_in"), bad)
        granted = data.get("scope")
        if granted is not None and not isinstance(granted, str):
            raise bad("scope must be a string")
        # A server may echo the request beside a good token; raw is shown (token --json).
        raw = redactor.scrub_data({k: v for k, v in data.items() if k != "access_token"})
        return AccessToken(
            value=value,
            token_type=token_type,
            expires_at=started_wall + timedelta(seconds=expires_in),
            scope=granted if granted is not None else scope,
            raw=raw,
            expires_in=expires_in,
            dpop_jkt=self.dpop.jkt if token_type == DPOP and self.dpop is not None else None,
        )

    def _check_token_type(
        self, token_type: Any, bad: Callable[[str], InvalidTokenResponseError], redactor: Redactor
    ) -> str:
        """``"Bearer"`` (RFC 6750; any case, RFC 6749 section 5.1, or one of
        ``accept_token_types``), or ``"DPoP"`` when this endpoint sends DPoP proofs."""
        if token_type is None:
            raise bad("token_type is missing (RFC 6749 section 5.1 requires it)")
        if not isinstance(token_type, str):
            raise bad(f"token_type must be Bearer, got a {type(token_type).__name__}")
        lowered = token_type.lower()
        if lowered == "dpop":
            if self.dpop is not None:
                return DPOP
            raise bad(
                "token_type is DPoP: the server binds this client's tokens to a DPoP key "
                "(RFC 9449), and every use needs a proof from it: set dpop=True (an ephemeral "
                "key) or dpop=<a Signer>; accept_token_types cannot accept them"
            )
        if lowered == "bearer" or lowered in self.accept_token_types:
            if self.dpop is not None and not self._warned_unbound:
                self._warned_unbound = True
                logger.warning(
                    "token endpoint %s answered a request with a DPoP proof with a %s token: it "
                    "does not bind tokens to the DPoP key (RFC 9449 section 5), so they are used "
                    "as Bearer tokens",
                    self.url,
                    "Bearer" if lowered == "bearer" else "non-DPoP",
                    extra={"leniency": True},  # shown by the CLI without --verbose
                )
            return "Bearer"
        # A short token68-like value is shown (scrubbed) and offered as the option's value;
        # anything longer or odder is described, never echoed.
        if len(token_type) < 20 and _TOKEN_TYPE.fullmatch(token_type):
            shown = redactor.scrub(token_type)
            if shown == token_type:
                raise bad(
                    f"token_type must be Bearer, got {shown!r}: set accept_token_types=({shown!r},) "
                    "if this server's tokens are Bearer tokens"
                )
        raise bad(
            f"token_type must be Bearer, got a {len(token_type)}-character value not shown: set "
            "accept_token_types=(<that value>,) if this server's tokens are Bearer tokens"
        )

    def _expires_in(self, value: Any, bad: Callable[[str], InvalidTokenResponseError]) -> float:
        if value is None:
            return self.default_expires_in
        if isinstance(value, str):
            # some servers send "3600"; accept ASCII digits only ("²".isdigit() is true too)
            if not (value.isascii() and value.isdigit() and len(value) < 12):
                raise bad("expires_in must be a number")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("expires_in must be a number")
        if isinstance(value, float) and not math.isfinite(value):  # no float(int): 10**400 overflows
            raise bad("expires_in must be a positive number")
        if value <= 0:
            raise bad("expires_in must be a positive number")
        if value > MAX_EXPIRES_IN:
            raise bad("expires_in is longer than a year")
        return float(value)
