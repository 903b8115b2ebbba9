"""Workload identity: a JWT the platform issued, sent as the client assertion.

No key at all on the client's side: the platform the process runs on (Kubernetes, Azure,
GitHub Actions, Google Cloud, SPIFFE) already hands it a short-lived, signed JWT naming the
workload, and an authorization server that trusts that platform's issuer accepts it as
``client_assertion`` (RFC 7523 section 2.2). This module holds

- :class:`AssertionSource`, the protocol of anything that hands out such a JWT, and the
  sources: :class:`FileAssertion` (a Kubernetes projected service-account token, Azure's
  ``AZURE_FEDERATED_TOKEN_FILE``), :class:`GitHubActionsAssertion` (the Actions OIDC
  endpoint), :class:`GcpMetadataAssertion` (the metadata server's identity token) and
  :class:`SpiffeJwtSvidAssertion` (a JWT-SVID file kept fresh by ``spiffe-helper``);
- :class:`WorkloadIdentity`, the client authentication that sends a source's JWT.

Every token request gets the source's JWT of that moment: files are re-read (the platform
rotates them), endpoints asked again; nothing is cached, so no JWT is ever sent past its own
``exp``. A JWT that has expired or expires within ``min_validity`` seconds is fetched once
more, then refused with an :class:`~keyless_m2m.AssertionSourceError`. The JWTs and the
credentials that fetch them (the GitHub request token) are held in a
:class:`~keyless_m2m._secret.Secret` and never appear in a ``repr``, an error or a log line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import anyio
import anyio.to_thread
import httpx

from ._http import BodyError, build_client, read_body, transport_failure
from ._jose import b64url_decode
from ._secret import Secret
from ._text import printable
from .client_auth import CLIENT_ASSERTION_TYPE, PreparedAuth, _check_client_id
from .errors import AssertionSourceError, ConfigurationError

__all__ = [
    "JWT_BEARER",
    "JWT_SPIFFE",
    "AssertionSource",
    "FileAssertion",
    "GcpMetadataAssertion",
    "GitHubActionsAssertion",
    "SpiffeJwtSvidAssertion",
    "WorkloadIdentity",
    "fresh_assertion",
]

logger = logging.getLogger("keyless_m2m")

JWT_BEARER: Final = CLIENT_ASSERTION_TYPE
"""``urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` (RFC 7523)."""
JWT_SPIFFE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
"""The SPIFFE JWT-SVID assertion type (draft-ietf-oauth-spiffe-client-auth)."""

MAX_ASSERTION_BYTES: Final = 64 * 1024  # a Kubernetes token is ~1 KiB; a JWT never needs more
_MAX_RESPONSE_BYTES: Final = 2 * MAX_ASSERTION_BYTES
_JWT_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@runtime_checkable
class AssertionSource(Protocol):
    """Hands out a JWT the platform issued for this workload.

    ``assertion_type`` is the ``client_assertion_type`` it goes with;
    :meth:`assertion` returns the JWT of this moment (re-read, re-fetched: never a copy
    kept from before). The audience is fixed when the source is made, as the
    authorization server's trust registration names it (Entra: ``api://AzureADTokenExchange``;
    Keycloak: the realm's issuer), not derived from the token endpoint. Raise
    :class:`~keyless_m2m.AssertionSourceError` when it cannot be had; a source of your own
    (a JWT-SVID from the Workload API through ``py-spiffe``, say) only needs the two members.
    """

    @property
    def assertion_type(self) -> str:
        """The ``client_assertion_type`` of its JWTs."""
        ...

    async def assertion(self) -> Secret[str]:
        """The platform's JWT now, compact serialization, in a :class:`Secret`."""
        ...


# -- the JWT: shape and exp (unverified: the server verifies; we only need its lifetime) -------


def _claims_of(assertion: Secret[str]) -> dict[str, Any] | None:
    """The JWT's claims, decoded without verification, or ``None`` if it is not a compact
    JWS with a JSON object as payload. Only the header and payload segments are ever bound
    to a local here (never the signature, the part that makes the JWT usable)."""
    value = assertion.reveal()
    if not 0 < len(value) <= MAX_ASSERTION_BYTES or not set(value) <= _JWT_CHARACTERS:
        return None
    if value.count(".") != 2:
        return None
    payload = value.split(".", 2)[1]
    del value
    try:
        claims = json.loads(b64url_decode(payload))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


def _expiry(claims: Mapping[str, Any]) -> float | None:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def _source_error(
    source: object, message: str, *, reason: str, retryable: bool, status_code: int | None = None
) -> AssertionSourceError:
    return AssertionSourceError(
        f"{source!r}: {message}", reason=reason, retryable=retryable, status_code=status_code
    )


async def fresh_assertion(
    source: AssertionSource, min_validity: float = 5.0
) -> tuple[Secret[str], dict[str, Any]]:
    """The source's JWT and its (unverified) claims, valid for at least ``min_validity``
    more seconds: one that is expired or about to be is fetched once more, then refused
    (:class:`~keyless_m2m.AssertionSourceError`, ``reason="expired"``, retryable: the
    platform rotates it)."""
    exp = left = 0.0
    for attempt in (1, 2):
        assertion = await source.assertion()
        if not isinstance(assertion, Secret):
            raise ConfigurationError(f"{source!r}.assertion() must return a Secret[str]")
        claims = _claims_of(assertion)
        if claims is None:
            raise _source_error(
                source, "what it gave is not a JWT (compact JWS)", reason="malformed", retryable=False
            )
        expiry = _expiry(claims)
        if expiry is None:
            raise _source_error(
                source, "its JWT has no numeric exp claim", reason="malformed", retryable=False
            )
        exp = expiry
        left = exp - time.time()
        if left >= min_validity:
            return assertion, claims
        if attempt == 1:
            logger.info("%r gave a JWT that expires in %.0fs; fetching it again", source, left)
    raise _source_error(
        source,
        f"its JWT expired or expires within {min_validity:g}s (exp {exp:.0f}, {left:+.0f}s from now), "
        "also when fetched again; the platform has not rotated it",
        reason="expired",
        retryable=True,
    )


# -- files ----------------------------------------------------------------------------------------


def _read_file(path: str, limit: int) -> Secret[bytes]:
    # The content goes into the Secret straight from read(): no local ever holds it.
    with open(path, "rb") as file:
        return Secret(file.read(limit + 1))


class FileAssertion:
    """A JWT in a file the platform writes and rotates: a Kubernetes projected
    service-account token, Azure workload identity's ``AZURE_FEDERATED_TOKEN_FILE``.

    >>> source = FileAssertion("/var/run/secrets/tokens/oauth")
    >>> source = FileAssertion.from_env()   # AZURE_FEDERATED_TOKEN_FILE

    The file is read again for every token request, in a worker thread, at most 64 KiB
    (surrounding whitespace removed). A file that is missing is retryable (the kubelet
    swaps projected volumes by a symlink); one that cannot be read otherwise, or is too
    large, is not.
    """

    ENVIRONMENT_VARIABLE: Final = "AZURE_FEDERATED_TOKEN_FILE"

    def __init__(self, path: str | os.PathLike[str], *, assertion_type: str = JWT_BEARER) -> None:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigurationError("path must be a non-empty path to the token file")
        if not isinstance(assertion_type, str) or not assertion_type:
            raise ConfigurationError("assertion_type must be a non-empty string")
        self.path = os.fspath(path)
        self._assertion_type = assertion_type
        self.reads = 0  # how many times the file was read (tests count rotations)

    @classmethod
    def from_env(cls, variable: str = ENVIRONMENT_VARIABLE, **options: Any) -> FileAssertion:
        """The file named by ``variable`` (``AZURE_FEDERATED_TOKEN_FILE``, set by the Azure
        workload identity webhook); a :class:`~keyless_m2m.ConfigurationError` if unset."""
        path = os.environ.get(variable)
        if not path:
            raise ConfigurationError(f"{variable} is not set: is workload identity enabled for this pod?")
        return cls(path, **options)

    @property
    def assertion_type(self) -> str:
        return self._assertion_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    async def assertion(self) -> Secret[str]:
        self.reads += 1
        failure: tuple[str, bool] | None = None
        try:
            content = await anyio.to_thread.run_sync(_read_file, self.path, MAX_ASSERTION_BYTES)
        except FileNotFoundError:
            failure = ("the file does not exist (yet)", True)
        except OSError as exc:
            failure = (f"cannot read the file: {exc.strerror or type(exc).__name__}", False)
        if failure is not None:
            raise _source_error(self, failure[0], reason="unreadable", retryable=failure[1])
        if len(content.reveal()) > MAX_ASSERTION_BYTES:
            raise _source_error(
                self,
                f"the file is larger than {MAX_ASSERTION_BYTES} bytes",
                reason="malformed",
                retryable=False,
            )
        return Secret(content.reveal().decode("ascii", "replace").strip())


class SpiffeJwtSvidAssertion(FileAssertion):
    """A SPIFFE JWT-SVID, sent with the ``jwt-spiffe`` assertion type
    (draft-ietf-oauth-spiffe-client-auth).

    >>> source = SpiffeJwtSvidAssertion("/run/spiffe/jwt_svid.token")

    The SPIFFE Workload API is gRPC over a unix socket (``SPIFFE_ENDPOINT_SOCKET``);
    keyless-m2m has no gRPC dependency, so this source reads the file that
    ``spiffe-helper`` keeps fresh (``jwt_svids = [{jwt_audience = "...",
    jwt_svid_file_name = "jwt_svid.token"}]`` in its configuration), like
    :class:`FileAssertion`. For the Workload API itself, wrap ``py-spiffe`` in an
    :class:`AssertionSource` of your own (docs/workload-identity.md).
    """

    def __init__(self, path: str | os.PathLike[str], *, assertion_type: str = JWT_SPIFFE) -> None:
        super().__init__(path, assertion_type=assertion_type)


# -- platform endpoints ----------------------------------------------------------------------------


class _EndpointAssertion:
    """A JWT fetched with one GET from a platform endpoint; the body is JSON
    (``json_member``) or the JWT itself."""

    json_member: str | None = None
    timeout: float

    def __init__(self, timeout: float) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self.timeout = float(timeout)
        self.requests = 0  # how many times the platform endpoint was asked

    @property
    def assertion_type(self) -> str:
        return JWT_BEARER

    def _request(self) -> tuple[str, dict[str, str | Secret[str]]]:
        raise NotImplementedError

    def _refusal_hint(self, status: int) -> str:
        return ""

    async def assertion(self) -> Secret[str]:
        url, headers = self._request()
        self.requests += 1
        failure: tuple[str, str, bool] | None = None
        status, body = 0, None
        client, _ = build_client(timeout=self.timeout, verify=True, trust=("assertion-source",))
        async with client:
            try:
                status, body = await _exchange(client, url, headers)
            except BodyError as exc:
                failure = ("malformed", f"its answer is refused: {exc}", False)
            except Exception as exc:  # every failure of the exchange becomes typed
                _, what, retryable = transport_failure(exc, urlsplit(url).hostname or "")
                failure = ("unavailable", f"cannot reach {self._where()}: {what}", retryable)
        # Raised here, outside the handlers: no chain to the HTTP library's exception, whose
        # traceback's frames hold the request (and its Authorization header).
        if failure is not None:
            raise _source_error(self, failure[1], reason=failure[0], retryable=failure[2])
        if body is None:
            retryable = status >= 500 or status in (408, 429)
            raise _source_error(
                self,
                f"{self._where()} answered HTTP {status}{self._refusal_hint(status)}",
                reason="refused",
                retryable=retryable,
                status_code=status,
            )
        return self._jwt_of(body)

    def _jwt_of(self, body: Secret[bytes]) -> Secret[str]:
        if self.json_member is None:
            return Secret(body.reveal().decode("ascii", "replace").strip())
        document = _json_object(body)
        value = document.get(self.json_member) if document is not None else None
        del document
        if not isinstance(value, str):
            raise _source_error(
                self,
                f"its answer is not a JSON object with a string {self.json_member!r}",
                reason="malformed",
                retryable=False,
            )
        return Secret(value)

    def _where(self) -> str:
        return "the platform endpoint"


async def _exchange(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str | Secret[str]]
) -> tuple[int, Secret[bytes] | None]:
    """One GET: the status and, for a 200, the body (capped). Never called but from inside
    a handler that keeps only the kind of its failure."""
    request = client.build_request("GET", url, headers={"Accept": "application/json"})
    for name, value in headers.items():
        request.headers[name] = value.reveal() if isinstance(value, Secret) else value
    response = await client.send(request, stream=True)
    try:
        if response.status_code != 200:
            return response.status_code, None
        return 200, Secret(await read_body(response, _MAX_RESPONSE_BYTES))
    finally:
        await response.aclose()


def _json_object(body: Secret[bytes]) -> dict[str, Any] | None:
    """The JSON object in ``body``, or ``None``; a decoding error (whose ``doc`` holds the
    whole body) never leaves this function."""
    try:
        document = json.loads(body.reveal())
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


class GitHubActionsAssertion(_EndpointAssertion):
    """The GitHub Actions OIDC token of the running job.

    >>> source = GitHubActionsAssertion(audience="api://AzureADTokenExchange")

    Reads ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN`` (set in
    jobs with ``permissions: id-token: write``; a
    :class:`~keyless_m2m.ConfigurationError` without them), asks with the request token as
    ``Bearer`` and ``&audience=`` appended (``audience=None``: GitHub's default, the
    repository owner's URL), and takes ``value`` from the JSON answer. The request token
    is a :class:`Secret` from the moment it is read.
    """

    URL_VARIABLE: Final = "ACTIONS_ID_TOKEN_REQUEST_URL"
    TOKEN_VARIABLE: Final = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"  # noqa: S105 - a variable name
    json_member = "value"

    def __init__(
        self,
        audience: str | None = None,
        *,
        request_url: str | None = None,
        request_token: str | Secret[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        token = request_token if isinstance(request_token, Secret) else None
        if token is None:
            raw = request_token if isinstance(request_token, str) else os.environ.get(self.TOKEN_VARIABLE)
            token = Secret(raw) if raw else None
            del raw
        del request_token
        super().__init__(timeout)
        url = request_url or os.environ.get(self.URL_VARIABLE)
        if not url or token is None or not token.reveal():
            raise ConfigurationError(
                f"{self.URL_VARIABLE} and {self.TOKEN_VARIABLE} are not set: GitHub sets them only in "
                "jobs with `permissions: id-token: write`"
            )
        if audience is not None and (not isinstance(audience, str) or not audience):
            raise ConfigurationError("audience must be a non-empty string (or None: GitHub's default)")
        self.audience = audience
        self.request_url = url
        self._token = token

    def __repr__(self) -> str:
        return f"GitHubActionsAssertion(audience={self.audience!r})"

    def _request(self) -> tuple[str, dict[str, str | Secret[str]]]:
        url = self.request_url
        if self.audience is not None:
            url += ("&" if "?" in url else "?") + "audience=" + quote(self.audience, safe="")
        return url, {"Authorization": Secret("Bearer " + self._token.reveal())}

    def _where(self) -> str:
        return "the GitHub Actions OIDC endpoint"

    def _refusal_hint(self, status: int) -> str:
        if status in (401, 403):
            return " (the request token is refused: does the job have `permissions: id-token: write`?)"
        return ""


class GcpMetadataAssertion(_EndpointAssertion):
    """A Google-signed identity token of the VM's (or Cloud Run's, GKE's) service account,
    from the metadata server.

    >>> source = GcpMetadataAssertion("https://login.example/realms/prod")

    ``GET http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/
    {service_account}/identity?audience=...&format=full`` with ``Metadata-Flavor: Google``.
    The host is ``GCE_METADATA_HOST`` when set (host or ``host:port``, as Google's own
    libraries read it), else ``metadata.google.internal``. The metadata server is plain
    http on the link-local network, never through a proxy.
    """

    HOST_VARIABLE: Final = "GCE_METADATA_HOST"
    DEFAULT_HOST: Final = "metadata.google.internal"

    def __init__(
        self,
        audience: str,
        *,
        service_account: str = "default",
        host: str | None = None,
        format: str = "full",
        timeout: float = 5.0,
    ) -> None:
        super().__init__(timeout)
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("audience must be a non-empty string (the authorization server's)")
        if format not in ("full", "standard"):
            raise ConfigurationError("format must be 'full' or 'standard'")
        if not isinstance(service_account, str) or not service_account or "/" in service_account:
            raise ConfigurationError("service_account must be 'default' or a service account's email")
        self.audience = audience
        self.service_account = service_account
        self.format = format
        self.host = host or os.environ.get(self.HOST_VARIABLE) or self.DEFAULT_HOST
        if "/" in self.host or "@" in self.host:
            raise ConfigurationError(
                f"the metadata host must be a host or host:port, got {printable(self.host, 80)!r}"
            )

    def __repr__(self) -> str:
        return f"GcpMetadataAssertion(audience={self.audience!r}, host={self.host!r})"

    def _request(self) -> tuple[str, dict[str, str | Secret[str]]]:
        url = (
            f"http://{self.host}/computeMetadata/v1/instance/service-accounts/"
            f"{quote(self.service_account, safe='@')}/identity"
            f"?audience={quote(self.audience, safe='')}&format={self.format}"
        )
        return url, {"Metadata-Flavor": "Google"}

    def _where(self) -> str:
        return f"the GCP metadata server {self.host}"

    def _refusal_hint(self, status: int) -> str:
        if status == 404:
            return " (no such service account: is one attached to this instance?)"
        return ""


# -- the client authentication ---------------------------------------------------------------------


class WorkloadIdentity:
    """Client authentication with a platform-issued JWT as ``client_assertion``
    (RFC 7523 section 2.2): federated credentials, no secret and no key of the client's.

    >>> auth = WorkloadIdentity("my-client", FileAssertion.from_env())
    >>> auth = WorkloadIdentity("ci", GitHubActionsAssertion("api://AzureADTokenExchange"))

    For every HTTP attempt it takes the source's JWT of that moment (:func:`fresh_assertion`:
    never one that expires within ``min_validity`` seconds) and sends it with
    ``client_assertion_type`` from the source (``jwt-bearer``, or ``jwt-spiffe`` for
    SPIFFE) and ``client_id`` (``send_client_id=False`` leaves it out: RFC 7523 makes it
    optional). ``method`` is ``"private_key_jwt"``: servers list federated assertions under
    that method in their metadata. When the server refuses it (``invalid_client``), the
    error's hint names the JWT's ``iss``, ``sub`` and ``aud``: what the server's federated
    credential must match. A failure of the source is an
    :class:`~keyless_m2m.AssertionSourceError`, retried by the token endpoint when retryable.
    """

    method = "private_key_jwt"

    def __init__(
        self,
        client_id: str,
        source: AssertionSource,
        *,
        min_validity: float = 5.0,
        send_client_id: bool = True,
    ) -> None:
        self.client_id = _check_client_id(client_id)
        if not isinstance(source, AssertionSource):
            raise ConfigurationError("source must be an AssertionSource (assertion_type and assertion())")
        if (
            isinstance(min_validity, bool)
            or not isinstance(min_validity, int | float)
            or not 0 <= min_validity < 300
        ):
            raise ConfigurationError("min_validity must be 0..300 seconds")
        if not isinstance(send_client_id, bool):
            raise ConfigurationError("send_client_id must be True or False")
        self.source = source
        self.min_validity = float(min_validity)
        self.send_client_id = send_client_id

    def __repr__(self) -> str:
        return f"WorkloadIdentity(client_id={self.client_id!r}, source={self.source!r})"

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        """Credentials for one attempt: the source's JWT of this moment."""
        assertion, claims = await fresh_assertion(self.source, self.min_validity)
        form: dict[str, str | Secret[str]] = {
            "client_assertion_type": self.source.assertion_type,
            "client_assertion": assertion,
        }
        if self.send_client_id:
            form = {"client_id": self.client_id, **form}
        return PreparedAuth(form=form, hint=_federation_hint(claims))


def _federation_hint(claims: Mapping[str, Any]) -> str:
    """Which ``iss``/``sub``/``aud`` the platform's JWT carried (claims, not secrets)."""

    def shown(name: str) -> str:
        value = claims.get(name)
        text = json.dumps(value) if isinstance(value, str | list) else "none"
        return printable(text, 120)

    return (
        f"the client assertion was the platform's JWT with iss {shown('iss')}, sub {shown('sub')}, "
        f"aud {shown('aud')}: the server's federated credential for this client must name that "
        "issuer and subject, and accept that audience"
    )
