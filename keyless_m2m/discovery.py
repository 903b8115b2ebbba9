"""Authorization server metadata: RFC 8414, then OpenID Connect Discovery.

:func:`discover` finds an issuer's metadata, checks that it describes that issuer, and
caches it; :func:`client_auth_mismatches` says what of the client's grant, authentication method and
signing algorithm the server does not list (:func:`check_client_auth` raises it);
:class:`DiscoveredTokenEndpoint` is the
token endpoint behind :meth:`TokenManager.from_issuer
<keyless_m2m.TokenManager.from_issuer>`, which discovers and checks once, before its
first token request::

    async with TokenManager.from_issuer("https://auth.example", auth, scope="pockets.read") as tokens:
        token = await tokens.get_token()     # metadata fetched and checked first, once

Where the metadata lives (RFC 8414 section 3.1 and OpenID Connect Discovery section 4):

=============================  ===================================================================
issuer                         tried in this order
=============================  ===================================================================
``https://auth.example``       ``https://auth.example/.well-known/oauth-authorization-server``,
                               ``https://auth.example/.well-known/openid-configuration``
``https://auth.example/t/a``   ``https://auth.example/.well-known/oauth-authorization-server/t/a``,
                               ``https://auth.example/t/a/.well-known/openid-configuration``
=============================  ===================================================================

The ``issuer`` in the document must equal the issuer asked for, character for character
(both specifications require it; it is what stops one server passing itself off as
another). A mismatch is a :class:`~keyless_m2m.DiscoveryError`, not a reason to try the
next location.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import monotonic
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from ._http import ACCEPT_ENCODING, BodyError, build_client, read_body, shared_verification, transport_failure
from ._text import printable
from .client_auth import ClientAuth
from .endpoint import (
    TokenEndpoint,
    _number,
    _Progress,
    _trust_of,
    check_endpoint_url,
    clock_skew_of,
    shown_url,
)
from .errors import ConfigurationError, DiscoveryError, TransportError
from .signers import Signer

__all__ = [
    "DiscoveredTokenEndpoint",
    "ServerMetadata",
    "check_client_auth",
    "clear_metadata_cache",
    "client_auth_algorithm",
    "client_auth_mismatches",
    "discover",
    "metadata_urls",
    "server_clock_skew",
]

logger = logging.getLogger("keyless_m2m")

RFC8414_SUFFIX = "/.well-known/oauth-authorization-server"
OIDC_SUFFIX = "/.well-known/openid-configuration"
MAX_METADATA_BYTES = 256 * 1024
DEFAULT_MAX_AGE = 3600.0
DEFAULT_DEADLINE = 30.0

# Metadata tells the client where to send its credentials, so it is shared only between
# fetches that believe the same servers: the key holds every setting that decides that
# (allow_insecure_http; the client's trust_key: verify=, the CAs verify=True resolved to,
# the proxy settings). A client you pass has settings that cannot be read: its metadata is
# cached for that client object only. Values: (cached until, monotonic clock; metadata).
_Entry = tuple[float, "ServerMetadata"]
_CACHE: dict[Hashable, _Entry] = {}  # (issuer, allow_insecure_http, trust key) -> entry
_CLIENT_CACHES: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[Hashable, _Entry]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """The parts of an authorization server's metadata a client-credentials client uses.

    The ``*_supported`` lists are ``None`` when the server does not publish them. ``raw``
    is the whole document; ``url`` where it was found; ``clock_skew`` the server's
    ``Date`` header minus this machine's clock when it was fetched, in seconds (the
    header has a one-second resolution; ``None`` without a usable header).
    """

    issuer: str
    token_endpoint: str
    token_endpoint_auth_methods_supported: tuple[str, ...] | None
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...] | None
    grant_types_supported: tuple[str, ...] | None
    url: str
    raw: Mapping[str, Any] = field(repr=False)
    clock_skew: float | None = field(default=None, repr=False)
    #: RFC 8705 section 5: the endpoints a client that presents a TLS client certificate
    #: uses instead (``token_endpoint`` checked as the token endpoint is); only string values.
    mtls_endpoint_aliases: Mapping[str, str] = field(default_factory=dict, repr=False)


def metadata_urls(issuer: str) -> list[str]:
    """Where to look for ``issuer``'s metadata, in order (RFC 8414, then OpenID)."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [origin + RFC8414_SUFFIX + path, origin + path + OIDC_SUFFIX]


def clear_metadata_cache() -> None:
    """Forget every cached metadata document (the next :func:`discover` fetches)."""
    _CACHE.clear()
    _CLIENT_CACHES.clear()


def _shown(value: Any, limit: int = 120) -> str:
    """A server-supplied value, safe and short enough to put in a message."""
    return printable(repr(shown_url(value) if isinstance(value, str) else value), limit)


def _check_issuer(issuer: Any, allow_insecure_http: bool) -> str:
    url = check_endpoint_url(issuer, allow_insecure_http=allow_insecure_http, what="issuer")
    if urlsplit(url).query:
        raise ConfigurationError(f"an issuer identifier has no ?query (RFC 8414), got {url!r}")
    return url


def _string_list(data: Mapping[str, Any], name: str, url: str) -> tuple[str, ...] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DiscoveryError(
            f"the metadata at {url} has a {name} that is not a list of strings", reason="invalid"
        )
    return tuple(value)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _parse(
    issuer: str,
    url: str,
    data: dict[str, Any],
    date_header: str | None,
    local: datetime,
    allow_insecure_http: bool,
) -> ServerMetadata:
    said = data.get("issuer")
    if said != issuer:
        raise DiscoveryError(
            f"issuer mismatch: asked for {issuer!r}, but the metadata at {url} says "
            f"issuer={_shown(said)}; configure exactly the issuer the server publishes "
            "(only if that server is the one you meant to trust)",
            reason="issuer_mismatch",
        )
    token_endpoint = data.get("token_endpoint")
    if not isinstance(token_endpoint, str) or not token_endpoint:
        raise DiscoveryError(f"the metadata at {url} has no token_endpoint", reason="invalid")
    _check_token_endpoint(url, token_endpoint, allow_insecure_http)
    aliases = _mtls_aliases(url, data, allow_insecure_http)
    return ServerMetadata(
        issuer=issuer,
        token_endpoint=token_endpoint,
        token_endpoint_auth_methods_supported=_string_list(
            data, "token_endpoint_auth_methods_supported", url
        ),
        token_endpoint_auth_signing_alg_values_supported=_string_list(
            data, "token_endpoint_auth_signing_alg_values_supported", url
        ),
        grant_types_supported=_string_list(data, "grant_types_supported", url),
        url=url,
        raw=data,
        clock_skew=clock_skew_of(date_header, local),
        mtls_endpoint_aliases=aliases,
    )


def _mtls_aliases(url: str, data: Mapping[str, Any], allow_insecure_http: bool) -> dict[str, str]:
    """``mtls_endpoint_aliases`` (RFC 8705 section 5): a JSON object of endpoint URLs; its
    ``token_endpoint`` receives credentials, so it is checked as ``token_endpoint`` is."""
    value = data.get("mtls_endpoint_aliases")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DiscoveryError(
            f"the metadata at {url} has an mtls_endpoint_aliases that is not an object", reason="invalid"
        )
    aliases = {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str) and v}
    if "token_endpoint" in value and "token_endpoint" not in aliases:
        raise DiscoveryError(
            f"the metadata at {url} has an mtls_endpoint_aliases.token_endpoint that is not a URL string",
            reason="unusable_token_endpoint",
        )
    if "token_endpoint" in aliases:
        _check_token_endpoint(
            url, aliases["token_endpoint"], allow_insecure_http, "mtls_endpoint_aliases.token_endpoint"
        )
    return aliases


def _check_token_endpoint(
    url: str, token_endpoint: str, allow_insecure_http: bool, name: str = "token_endpoint"
) -> None:
    """The metadata at ``url`` may send credentials to ``token_endpoint``: a URL the
    endpoint itself would accept (no ``user:password@``; https, or http on loopback or with
    ``allow_insecure_http``), and never plain http when the metadata came over https."""
    try:
        check_endpoint_url(token_endpoint, allow_insecure_http=allow_insecure_http)
    except ConfigurationError as exc:
        raise DiscoveryError(
            f"the metadata at {url} has an unusable {name}: {exc}", reason="unusable_token_endpoint"
        ) from None
    if urlsplit(url).scheme == "https" and urlsplit(token_endpoint).scheme != "https":
        raise DiscoveryError(
            f"the metadata at {url} names the plain http:// {name} {token_endpoint!r}: "
            "refused, metadata fetched over https never downgrades the token endpoint to http "
            "(the client's credentials would travel in clear text; allow_insecure_http and "
            "loopback hosts do not change this). Configure token_endpoint= yourself if you mean it",
            reason="unusable_token_endpoint",
        )


async def _get(client: httpx.AsyncClient, url: str) -> tuple[int, bytes, str | None, datetime]:
    """GET ``url``: (status, decoded body up to the size cap, Date header, local time of the
    answer). Every failure is typed: ``TransportError`` (with its ``reason``) for the
    exchange, ``DiscoveryError`` for a body over the cap, in a refused coding, or corrupt."""
    headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
    failure: tuple[str, str, bool] | None = None
    refused: tuple[int, BodyError] | None = None
    try:
        async with client.stream("GET", url, headers=headers) as response:
            local = datetime.now(UTC)
            try:
                body = await read_body(response, MAX_METADATA_BYTES)
            except BodyError as exc:
                refused = (response.status_code, exc)
            else:
                return response.status_code, body, response.headers.get("date"), local
    except Exception as exc:  # every failure of the exchange becomes typed
        # Keep only the kind; raised outside this block, so the httpx exception (which
        # holds the request) is neither the cause nor the context.
        failure = transport_failure(exc, urlsplit(url).hostname or "")
    if refused is not None:
        status, body_error = refused
        raise DiscoveryError(
            f"the metadata at {url} (HTTP {status}) is refused: {body_error}",
            reason="refused",
            retryable=status == 429 or status >= 500,
        )
    assert failure is not None
    reason, what, retryable = failure
    raise TransportError(
        f"cannot reach the authorization server metadata at {url}: {what}", reason=reason, retryable=retryable
    )


async def server_clock_skew(http_client: httpx.AsyncClient, url: str) -> float | None:
    """The server's clock minus this machine's, in seconds, from the ``Date`` header of
    one GET to ``url`` (any status counts; the header has a one-second resolution).

    >>> async with httpx.AsyncClient() as http:
    ...     skew = await server_clock_skew(http, "https://auth.example/oauth2/token")

    ``None`` when the answer has no usable ``Date`` header. Raises
    :class:`~keyless_m2m.TransportError` when the server cannot be reached and
    :class:`~keyless_m2m.DiscoveryError` for a body over the size cap, in a refused coding,
    or corrupt (the body is read, bounded, and dropped). A client assertion lives 60 s
    from its ``iat``: a skew of tens of seconds makes servers reject it.
    """
    _status, _body, date_header, local = await _get(http_client, url)
    return clock_skew_of(date_header, local)


async def discover(
    issuer: str,
    *,
    http_client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - httpx's per-request timeout, as TokenEndpoint has
    verify: Any = True,
    allow_insecure_http: bool = False,
    max_age: float = DEFAULT_MAX_AGE,
    deadline: float = DEFAULT_DEADLINE,
) -> ServerMetadata:
    """Fetch (or take from the cache) the metadata of ``issuer``, within ``deadline``
    seconds for every location tried (30 s).

    >>> metadata = await discover("https://auth.example")
    >>> metadata.token_endpoint
    'https://auth.example/oauth2/token'

    Tries the RFC 8414 location, then the OpenID one (see the module docstring); the
    document's ``issuer`` must equal ``issuer``. Results are cached for ``max_age``
    seconds per issuer (``max_age=0`` fetches and does not read the cache). Raises
    :class:`~keyless_m2m.DiscoveryError` (retryable when a server answered 5xx/429),
    :class:`~keyless_m2m.TransportError` when the server cannot be reached or the
    deadline runs out (``reason="deadline"``), and
    :class:`~keyless_m2m.ConfigurationError` for an unusable issuer URL or option.
    """
    issuer = _check_issuer(issuer, allow_insecure_http)
    max_age = _number("max_age", max_age, zero_ok=True)
    deadline = _number("deadline", deadline)
    if http_client is not None:
        return await _discover_with(http_client, None, issuer, allow_insecure_http, max_age, deadline)
    # A CA path or "system": loaded in a worker thread, once per process (the shared context).
    verification = (
        verify
        if verify is True or verify is False
        else await anyio.to_thread.run_sync(shared_verification, verify)
    )
    client, trust_key = build_client(
        timeout=_number("timeout", timeout), verify=verify, trust=_trust_of(verify, verification)
    )
    try:
        return await _discover_with(client, trust_key, issuer, allow_insecure_http, max_age, deadline)
    finally:
        await client.aclose()


async def _discover_with(
    client: httpx.AsyncClient,
    trust_key: Hashable | None,
    issuer: str,
    allow_insecure_http: bool,
    max_age: float,
    deadline: float,
) -> ServerMetadata:
    """:func:`discover` with ``client``: the cache entry for ``trust_key`` (``None``: a
    client whose settings are unknown, cached for that object only), else a fetch."""
    cache: dict[Hashable, _Entry]
    key: Hashable
    if trust_key is None:
        cache = _CLIENT_CACHES.setdefault(client, {})
        key = (issuer, allow_insecure_http)
    else:
        cache = _CACHE
        key = (issuer, allow_insecure_http, trust_key)
    if max_age > 0:
        cached = cache.get(key)
        if cached is not None and monotonic() < cached[0]:
            # Checked again under this caller's rules: a cached entry is believed no more
            # than a fresh answer would be.
            _check_token_endpoint(cached[1].url, cached[1].token_endpoint, allow_insecure_http)
            _mtls_aliases(cached[1].url, cached[1].raw, allow_insecure_http)
            return cached[1]
    progress = _Progress()
    with anyio.move_on_after(deadline):
        metadata = await _discover(client, issuer, allow_insecure_http, progress)
        if max_age > 0:
            cache[key] = (monotonic() + max_age, metadata)
        return metadata
    raise TransportError(
        f"discovery of {issuer} did not finish within deadline={deadline:g}s: it was {progress.step}",
        reason="deadline",
    )


async def _discover(
    client: httpx.AsyncClient, issuer: str, allow_insecure_http: bool, progress: _Progress
) -> ServerMetadata:
    misses: list[str] = []
    retryable = False
    for url in metadata_urls(issuer):
        progress.step = f"fetching the authorization server metadata at {url}"
        status, body, date_header, local = await _get(client, url)
        if status == 200:
            data = _json_object(body)
            if data is not None:
                # A document, right or wrong, ends the search: a wrong one is an error,
                # never a reason to trust another location.
                return _parse(issuer, url, data, date_header, local, allow_insecure_http)
            misses.append(f"{url}: HTTP 200 but not a JSON object")
            continue
        retryable = retryable or status == 429 or status >= 500
        misses.append(f"{url}: HTTP {status}")
    raise DiscoveryError(
        f"no authorization server metadata for issuer {issuer!r} ({'; '.join(misses)})",
        reason="not_found",
        retryable=retryable,
    )


async def client_auth_algorithm(client_auth: ClientAuth) -> str | None:
    """The JWS ``alg`` of the client's assertions (``None`` for client secrets)."""
    signer = getattr(client_auth, "signer", None)
    if isinstance(signer, Signer):
        return (await signer.describe()).algorithm
    return None


def client_auth_mismatches(
    metadata: ServerMetadata, method: str, algorithm: str | None = None
) -> list[DiscoveryError]:
    """What the server's metadata says it does not support, of what the client will use:
    the ``client_credentials`` grant, the authentication ``method``, the assertion
    ``algorithm``. One :class:`~keyless_m2m.DiscoveryError` per list that leaves it out
    (``reason`` ``"grant_unsupported"``, ``"method_unsupported"`` or
    ``"algorithm_unsupported"``), each naming what the server lists instead; an empty list
    when nothing is missing. A list the server does not publish is not second-guessed.

    >>> import dataclasses
    >>> no_grant = dataclasses.replace(metadata, grant_types_supported=("authorization_code",))
    >>> [e.reason for e in client_auth_mismatches(no_grant, "private_key_jwt", "ES256")]
    ['grant_unsupported']

    Deployed servers leave out what they support (a grant, a method), so
    :class:`DiscoveredTokenEndpoint` logs these as one warning and goes on to the token
    request, whose answer is authoritative; ``strict_metadata=True`` raises the first.
    """
    mismatches: list[DiscoveryError] = []
    grants = metadata.grant_types_supported
    if grants is not None and "client_credentials" not in grants:
        mismatches.append(
            DiscoveryError(
                f"the authorization server {metadata.issuer} does not list the client_credentials "
                f"grant; it supports: {', '.join(grants) or 'none'}",
                reason="grant_unsupported",
            )
        )
    methods = metadata.token_endpoint_auth_methods_supported
    if methods is not None and method not in methods:
        mismatches.append(
            DiscoveryError(
                f"the authorization server {metadata.issuer} does not support the token endpoint "
                f"auth method {method!r}; it supports: {', '.join(methods) or 'none'}",
                reason="method_unsupported",
            )
        )
    algs = metadata.token_endpoint_auth_signing_alg_values_supported
    if algorithm is not None and algs is not None and algorithm not in algs:
        mismatches.append(
            DiscoveryError(
                f"the authorization server {metadata.issuer} does not accept {algorithm} "
                f"client assertions; it accepts: {', '.join(algs) or 'none'}",
                reason="algorithm_unsupported",
            )
        )
    return mismatches


def _unpublished(metadata: ServerMetadata, algorithm: str | None) -> list[str]:
    notes: list[str] = []
    if metadata.token_endpoint_auth_methods_supported is None:
        notes.append("the server does not publish token_endpoint_auth_methods_supported")
    if algorithm is not None and metadata.token_endpoint_auth_signing_alg_values_supported is None:
        notes.append("the server does not publish token_endpoint_auth_signing_alg_values_supported")
    return notes


def check_client_auth(metadata: ServerMetadata, method: str, algorithm: str | None = None) -> list[str]:
    """Check strictly that the server supports the client's ``method`` and assertion
    ``algorithm`` (and the ``client_credentials`` grant).

    Raises the first of :func:`client_auth_mismatches` (a
    :class:`~keyless_m2m.DiscoveryError` naming what the server supports instead);
    returns notes about what could not be checked because the server does not publish
    it. A list the server leaves out is not second-guessed: RFC 8414 would have
    ``client_secret_basic`` as the default method, but servers that omit the list often
    support more, and the token request will tell. This is what
    ``strict_metadata=True`` applies; by default a mismatch is only a warning.
    """
    mismatches = client_auth_mismatches(metadata, method, algorithm)
    if mismatches:
        raise mismatches[0]
    return _unpublished(metadata, algorithm)


class DiscoveredTokenEndpoint(TokenEndpoint):
    """A :class:`~keyless_m2m.endpoint.TokenEndpoint` found through the issuer's metadata.

    Before its first token request it runs :meth:`discover`: fetch the metadata (cached,
    see :func:`discover`), check the client's grant, method and algorithm against it
    (:func:`client_auth_mismatches`), and take the token endpoint URL from it. Until then
    :attr:`url` is the issuer. Call :meth:`discover` yourself to fail fast at start-up.

    Metadata that leaves out the ``client_credentials`` grant, the client's method or its
    algorithm is logged as one WARNING (logger ``"keyless_m2m"``, once per discovery) and
    the token request goes ahead: deployed servers omit what they support, and the token
    endpoint's answer is authoritative. ``strict_metadata=True`` raises the
    :class:`~keyless_m2m.DiscoveryError` instead, before any token request.
    ``metadata_max_age`` bounds the shared cache's age; other options are
    :class:`TokenEndpoint`'s.
    """

    def __init__(
        self,
        issuer: str,
        client_auth: ClientAuth,
        *,
        allow_insecure_http: bool = False,
        metadata_max_age: float = DEFAULT_MAX_AGE,
        strict_metadata: bool = False,
        **options: Any,
    ) -> None:
        issuer = _check_issuer(issuer, allow_insecure_http)
        if not isinstance(strict_metadata, bool):
            raise ConfigurationError("strict_metadata must be True or False")
        super().__init__(issuer, client_auth, allow_insecure_http=allow_insecure_http, **options)
        self.issuer = self._issuer = issuer
        self.metadata: ServerMetadata | None = None
        self.metadata_max_age = _number("metadata_max_age", metadata_max_age, zero_ok=True)
        self.strict_metadata = strict_metadata
        self._allow_insecure_http = allow_insecure_http
        self._discover_lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"DiscoveredTokenEndpoint(issuer={self.issuer!r}, client_auth={self.client_auth!r})"

    async def discover(self) -> ServerMetadata:
        """Fetch and check the metadata once; later calls return it at once. Bounded by
        the endpoint's ``deadline`` (inside :meth:`request`, by what is left of it)."""
        if self.metadata is not None:
            return self.metadata
        progress = _Progress()
        with anyio.move_on_after(self.deadline):
            return await self._discover_once(progress)
        raise TransportError(
            f"discovery of {self.issuer} did not finish within deadline={self.deadline:g}s: "
            f"it was {progress.step}",
            reason="deadline",
        )

    async def _discover_once(self, progress: _Progress) -> ServerMetadata:
        if self._discover_lock is None:
            self._discover_lock = anyio.Lock()
        progress.step = "waiting for another task's discovery"
        async with self._discover_lock:
            if self.metadata is None:
                progress.step = f"fetching the authorization server metadata of {self.issuer}"
                client = self._client()
                metadata = await _discover_with(
                    client,
                    self._trust_key if self._owns_http else None,
                    self._issuer,
                    self._allow_insecure_http,
                    self.metadata_max_age,
                    self.deadline,
                )
                progress.step = "describing the signer's key (to check its algorithm)"
                algorithm = await client_auth_algorithm(self.client_auth)
                self._check(metadata, algorithm)
                self.url = self._token_endpoint_of(metadata)
                if self.clock_skew is None:
                    self.clock_skew = metadata.clock_skew
                self.metadata = metadata
        return self.metadata

    def _token_endpoint_of(self, metadata: ServerMetadata) -> str:
        """Where the token requests go: ``mtls_endpoint_aliases.token_endpoint`` when the
        connection presents a client certificate (``TlsClientAuth``, or
        ``client_certificate=`` for certificate-bound tokens; RFC 8705 section 5) and the
        server publishes one, else ``token_endpoint``."""
        alias = metadata.mtls_endpoint_aliases.get("token_endpoint")
        if self.client_certificate is not None and alias is not None:
            logger.debug("discovery of %s: token requests go to the mTLS alias %s", self.issuer, alias)
            return alias
        return metadata.token_endpoint

    def _check(self, metadata: ServerMetadata, algorithm: str | None) -> None:
        method = self.client_auth.method
        if self.strict_metadata:
            check_client_auth(metadata, method, algorithm)
        else:
            mismatches = client_auth_mismatches(metadata, method, algorithm)
            if mismatches:
                logger.warning(
                    "discovery of %s: %s; sending the token request anyway (the server's answer "
                    "decides; strict_metadata=True refuses instead)",
                    self.issuer,
                    "; ".join(str(m) for m in mismatches),
                    extra={"leniency": True},  # shown by the CLI without --verbose
                )
        for note in _unpublished(metadata, algorithm):
            logger.debug("discovery of %s: %s; not checked", self.issuer, note)

    async def _prepare(self, progress: _Progress) -> None:
        # Inside request()'s deadline: discovery and the attempts share one budget.
        if self.metadata is None:
            progress.step = f"discovering the authorization server metadata of {self.issuer}"
            await self._discover_once(progress)
