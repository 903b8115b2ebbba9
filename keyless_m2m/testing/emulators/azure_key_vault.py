"""A fake Azure Key Vault (keys: get and sign) for tests, served over HTTPS on loopback.

No Key Vault emulator exists, and the Azure SDK refuses plain ``http://``, so this is a
small protocol-level fake of the Key Vault REST API that the *real* SDK can talk to:

- TLS with a throwaway CA and server certificate generated at :meth:`FakeKeyVault.start`;
  the CA certificate is written to :attr:`FakeKeyVault.cert_path` for ``connection_verify``;
- the bearer challenge: a request without the expected token gets a 401 with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
  resource="https://vault.azure.net"``, as Key Vault does;
- ``GET /keys/{name}`` and ``GET /keys/{name}/{version}`` return the key bundle with a
  public JWK (``kid``, ``kty``, ``key_ops``, ``n``/``e`` or ``crv``/``x``/``y``);
- ``POST /keys/{name}/{version}/sign`` signs a digest with a real private key
  (RS*/PS* with salt = hash length, ES* as raw ``r || s``, ES256K);
- errors as Key Vault sends them: ``{"error": {"code": ..., "message": ...}}``;
- faults through the test kit's one fault API: ``vault.fail_next(KeyVaultFault(429,
  operation="sign", retry_after=1))`` (429 with ``Retry-After``, 500, 403, a dropped
  connection...), ``vault.clear_faults()``; and :meth:`FakeKeyVault.rotate_key` (a new
  latest version).

It runs in its own threads, so asyncio and trio tests (and sync code) can all use it::

    from keyless_m2m.signers import AzureKeyVaultSigner
    from keyless_m2m.testing.emulators.azure_key_vault import AsyncFakeKeyVaultCredential, FakeKeyVault

    with FakeKeyVault() as vault:
        key_url = vault.add_key("m2m-signing", curve="P-256")
        signer = AzureKeyVaultSigner(
            key_url,
            credential=AsyncFakeKeyVaultCredential(vault.token),
            **vault.client_options(),   # verify_challenge_resource=False, connection_verify=...
        )
        signer = vault.signer("m2m-signing")   # the same, in one call

The SDK must be told ``verify_challenge_resource=False``: the challenge names
``vault.azure.net`` while the fake listens on ``127.0.0.1``. Needs the ``azure`` extra
(``azure-core`` for the credentials' ``AccessToken``) and ``cryptography``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from .._faults import warn_deprecated
from ..tls import loopback_tls
from ._base import LoopbackHTTPHandler, LoopbackServer

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

    from ...signers.azure import AzureKeyVaultSigner

__all__ = [
    "DEFAULT_KEY_OPS",
    "AsyncFakeKeyVaultCredential",
    "FakeKeyVault",
    "FakeKeyVaultCredential",
    "KeyVaultFault",
    "RecordedRequest",
]

#: What ``az keyvault key create --ops sign verify`` gives a key.
DEFAULT_KEY_OPS: tuple[str, ...] = ("sign", "verify")
DEFAULT_TOKEN = "fake-key-vault-access-token"  # noqa: S105 - a test value, not a secret
DEFAULT_TENANT = "72f988bf-0000-4000-8000-00000000fake"
KEY_VAULT_RESOURCE = "https://vault.azure.net"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "256": hashes.SHA256(),
    "384": hashes.SHA384(),
    "512": hashes.SHA512(),
}
_CURVES: dict[str, tuple[ec.EllipticCurve, str, int]] = {
    # JWK crv -> (curve, the only Key Vault ECDSA alg for it, coordinate bytes)
    "P-256": (ec.SECP256R1(), "ES256", 32),
    "P-384": (ec.SECP384R1(), "ES384", 48),
    "P-521": (ec.SECP521R1(), "ES512", 66),
    "P-256K": (ec.SECP256K1(), "ES256K", 32),
}
_CRV_BY_CURVE_NAME = {curve.name: crv for crv, (curve, _, _) in _CURVES.items()}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size if size is not None else max(1, (value.bit_length() + 7) // 8), "big")


@dataclass
class _KeyVersion:
    name: str
    version: str
    private_key: PrivateKey
    key_ops: tuple[str, ...]
    enabled: bool
    hsm: bool
    created: int


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake answered (for assertions in tests)."""

    method: str
    path: str
    operation: str  # "get", "sign" or "other"
    key_name: str | None
    key_version: str | None  # as requested; "" means "latest"
    api_version: str | None
    authorized: bool
    status: int


@dataclass(frozen=True)
class KeyVaultFault:
    """Key Vault's answer to the next ``count`` authorized requests (``None``: until cleared).

    ``status`` comes with the error body Key Vault sends for it (``Throttled`` for 429,
    ``Forbidden`` with ``ForbiddenByRbac`` for 403, ...; ``code`` overrides the error
    code); ``operation`` limits the fault to ``"get"`` or ``"sign"`` requests;
    ``retry_after`` adds a ``Retry-After`` header (Key Vault sends one with 429s, and the SDK
    then retries even POSTs); ``drop_connection=True`` closes the connection without an
    answer instead.

    >>> vault.fail_next(KeyVaultFault(429, operation="sign", retry_after=0.01, count=2))
    """

    status: int = 429
    operation: Literal["get", "sign"] | None = None
    retry_after: float | None = None
    code: str | None = None
    count: int | None = 1
    drop_connection: bool = False

    def __post_init__(self) -> None:
        if self.operation not in (None, "get", "sign"):
            raise ValueError("operation must be None, 'get' or 'sign'")


@dataclass
class _State:
    keys: dict[str, list[_KeyVersion]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    """HTTPS server that does the TLS handshake in the per-connection thread."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], fake: FakeKeyVault, context: ssl.SSLContext) -> None:
        self.fake = fake
        self.tls = context
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, fake.handler_class)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that gave up during the handshake
        with self.connections_lock:
            self.open_connections.add(conn)
        try:
            self.fake.handler_class(conn, client_address, self)
        except (ssl.SSLError, OSError):
            pass  # the client went away mid-request
        finally:
            with self.connections_lock:
                self.open_connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:  # pragma: no cover
        pass  # never print tracebacks of dropped connections into test output

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class KeyVaultHandler(LoopbackHTTPHandler):
    """The fake's request handler: every method goes to :meth:`FakeKeyVault._handle`."""

    timeout = 30  # a stuck client cannot pin a thread forever
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.fake._handle(
            method, self.path, self.headers.get("Authorization"), body
        )
        if status == 0:  # an injected connection drop: close without answering
            self.close_connection = True
            return
        headers = dict(headers)
        data = json.dumps(payload).encode() if payload is not None else b""
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        self.respond(status, headers, data)


class FakeKeyVault(LoopbackServer):
    """An in-process HTTPS fake of the Key Vault keys API (see the module docstring).

    ``token`` is the bearer token the fake accepts (give it to a
    :class:`FakeKeyVaultCredential` / :class:`AsyncFakeKeyVaultCredential`); ``tenant_id``
    appears in the 401 challenge. Start it with :meth:`start` (it returns the fake) or
    ``with FakeKeyVault() as vault:``; :meth:`stop` shuts the server threads down and
    removes the certificate file. Faults: :meth:`fail_next` with :class:`KeyVaultFault`
    objects, :meth:`clear_faults`.
    """

    scheme = "https"
    fault_types = (KeyVaultFault,)
    #: The request handler class (a subclass may record or alter what goes on the wire).
    handler_class: ClassVar[type[KeyVaultHandler]] = KeyVaultHandler

    def __init__(
        self, *, token: str = DEFAULT_TOKEN, tenant_id: str = DEFAULT_TENANT, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(host=host)
        self.token = token
        self.tenant_id = tenant_id
        self._state = _State()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self.cert_path = ""

    # -- lifecycle ----------------------------------------------------------------------

    def _serve(self) -> int:
        """Generate the certificates, bind an ephemeral loopback port and serve in a thread."""
        self._tmpdir = tempfile.mkdtemp(prefix="fake-key-vault-")
        try:
            context = self._tls_context(self._tmpdir)
            server = _Server((self.host, 0), self, context)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            raise
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-key-vault", daemon=True
        )
        self._thread.start()
        return int(server.server_address[1])

    def _shutdown(self) -> None:
        """Stop serving, close open connections, join the threads, remove the cert file."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.drop_connections()
            server.server_close()  # joins the connection threads
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _tls_context(self, directory: str) -> ssl.SSLContext:
        self.cert_path, context = loopback_tls(directory, self.host, ca_name="fake-key-vault test CA")
        return context

    # -- addresses ------------------------------------------------------------------------

    @property
    def vault_url(self) -> str:
        """``https://127.0.0.1:PORT`` (the fake must be started); the same as :attr:`url`."""
        return self.url

    def key_url(self, name: str, version: str | None = None) -> str:
        """The Key Vault key identifier ``https://127.0.0.1:PORT/keys/NAME[/VERSION]``."""
        return f"{self.vault_url}/keys/{name}" + (f"/{version}" if version else "")

    def client_options(self, **overrides: Any) -> dict[str, Any]:
        """SDK client options that let the real SDK talk to this fake.

        ``verify_challenge_resource=False`` (the challenge names vault.azure.net, not
        127.0.0.1) and ``connection_verify`` = the fake's CA file. Pass retry settings
        (``retry_total=``, ``retry_backoff_factor=``...) as ``overrides``.
        """
        return {"verify_challenge_resource": False, "connection_verify": self.cert_path, **overrides}

    def signer(
        self, name: str, version: str | None = None, *, credential: Any = None, **options: Any
    ) -> AzureKeyVaultSigner:
        """An :class:`~keyless_m2m.signers.AzureKeyVaultSigner` wired to this fake.

        ``credential`` defaults to an :class:`AsyncFakeKeyVaultCredential` for this fake's
        token; ``options`` are the signer's (``algorithm=``, ``key_id=``...) and SDK client
        options (``retry_total=``...), added to :meth:`client_options`.
        """
        from ...signers.azure import AzureKeyVaultSigner

        if credential is None:
            credential = self.async_credential()
        return AzureKeyVaultSigner(
            self.key_url(name, version), credential=credential, **self.client_options(**options)
        )

    def credential(self) -> FakeKeyVaultCredential:
        """A synchronous test credential that returns this fake's token."""
        return FakeKeyVaultCredential(self.token)

    def async_credential(self) -> AsyncFakeKeyVaultCredential:
        """An asynchronous test credential that returns this fake's token."""
        return AsyncFakeKeyVaultCredential(self.token)

    # -- keys -----------------------------------------------------------------------------

    def add_key(
        self,
        name: str,
        key: PrivateKey | None = None,
        *,
        curve: str | None = None,
        size: int = 2048,
        key_ops: Iterable[str] = DEFAULT_KEY_OPS,
        enabled: bool = True,
        hsm: bool = False,
    ) -> str:
        """Create key ``name`` (or a new version of it) and return its versioned id.

        Give a cryptography private key, or let the fake generate one: ``curve`` =
        ``"P-256"``/``"P-384"``/``"P-521"``/``"P-256K"`` (EC) or ``"Ed25519"`` (an OKP key
        real Key Vault would not have, for testing rejection), else RSA of ``size`` bits.
        ``hsm=True`` reports ``kty`` ``RSA-HSM``/``EC-HSM``.
        """
        if not _NAME.match(name):
            raise ValueError(f"invalid Key Vault key name {name!r}")
        if key is None:
            key = self._generate(curve, size)
        elif not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise TypeError("key must be an RSA, EC or Ed25519 private key")
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in _CRV_BY_CURVE_NAME:
            raise ValueError(f"Key Vault has no curve {key.curve.name}")
        entry = _KeyVersion(
            name=name,
            version=uuid.uuid4().hex,
            private_key=key,
            key_ops=tuple(key_ops),
            enabled=enabled,
            hsm=hsm,
            created=int(time.time()),
        )
        with self._lock:
            self._state.keys.setdefault(name, []).append(entry)
        return self.key_url(name, entry.version)

    def rotate_key(self, name: str) -> str:
        """Add a new latest version of ``name`` with a fresh key of the same type."""
        with self._lock:
            versions = self._state.keys.get(name)
            if not versions:
                raise KeyError(name)
            latest = versions[-1]
        old = latest.private_key
        if isinstance(old, rsa.RSAPrivateKey):
            fresh: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=old.key_size)
        elif isinstance(old, ec.EllipticCurvePrivateKey):
            fresh = ec.generate_private_key(old.curve)
        else:
            fresh = ed25519.Ed25519PrivateKey.generate()
        return self.add_key(name, fresh, key_ops=latest.key_ops, enabled=latest.enabled, hsm=latest.hsm)

    def set_enabled(self, name: str, enabled: bool, version: str | None = None) -> None:
        """Enable or disable a key version (the latest by default)."""
        with self._lock:
            self._find(name, version or "").enabled = enabled

    def private_key(self, name: str, version: str | None = None) -> PrivateKey:
        """The private key behind a version (the latest by default), for test assertions."""
        with self._lock:
            return self._find(name, version or "").private_key

    def versions(self, name: str) -> list[str]:
        """The versions of ``name``, oldest first."""
        with self._lock:
            return [v.version for v in self._state.keys.get(name, [])]

    @staticmethod
    def _generate(curve: str | None, size: int) -> PrivateKey:
        if curve is None:
            return rsa.generate_private_key(public_exponent=65537, key_size=size)
        if curve == "Ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        if curve not in _CURVES:
            raise ValueError(f"unknown curve {curve!r}; use one of {', '.join(_CURVES)} or Ed25519")
        return ec.generate_private_key(_CURVES[curve][0])

    def _find(self, name: str, version: str) -> _KeyVersion:
        versions = self._state.keys.get(name)
        if not versions:
            raise KeyError(name)
        if not version:
            return versions[-1]
        for entry in versions:
            if entry.version == version:
                return entry
        raise KeyError(f"{name}/{version}")

    # -- faults and records -----------------------------------------------------------------

    def fail_next(self, *faults: Any, **legacy: Any) -> None:
        """Queue :class:`KeyVaultFault` answers for the next authorized requests.

        The spelling ``fail_next(count=1, *, status=429, operation=None, retry_after=None,
        code=None)`` (``status=0``: a dropped connection) still works, with a
        ``DeprecationWarning``.
        """
        if legacy or not faults or not isinstance(faults[0], KeyVaultFault):
            warn_deprecated(
                "FakeKeyVault.fail_next(count, status=...)", "fail_next(KeyVaultFault(status, count=...))"
            )
            faults = (_legacy_fault(*faults, **legacy),)
        super().fail_next(*faults)

    def reset_faults(self) -> None:
        """Deprecated spelling of :meth:`clear_faults`."""
        warn_deprecated("FakeKeyVault.reset_faults()", "clear_faults()")
        self.clear_faults()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far, oldest first."""
        with self._lock:
            return list(self._state.requests)

    def sign_requests(self) -> list[RecordedRequest]:
        """The authorized sign requests that succeeded."""
        return [r for r in self.requests if r.operation == "sign" and r.status == 200]

    # -- the protocol -----------------------------------------------------------------------

    def _challenge(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
                f'resource="{KEY_VAULT_RESOURCE}"'
            )
        }

    def _handle(
        self, method: str, raw_path: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        api_version = query.get("api-version", [None])[0]
        segments = parts.path.split("/")
        # /keys/NAME, /keys/NAME/, /keys/NAME/VERSION, /keys/NAME/VERSION/sign
        operation, name, version = "other", None, None
        if len(segments) >= 3 and segments[1] == "keys":
            name = segments[2]
            rest = segments[3:]
            if method == "GET" and len(rest) <= 1:
                operation, version = "get", (rest[0] if rest else "")
            elif method == "POST" and len(rest) == 2 and rest[1] == "sign":
                operation, version = "sign", rest[0]
        authorized = authorization == f"Bearer {self.token}"
        status, headers, payload = self._answer(
            method, operation, name, version, api_version, authorized, authorization, body
        )
        with self._lock:
            self._state.requests.append(
                RecordedRequest(method, parts.path, operation, name, version, api_version, authorized, status)
            )
        return status, headers, payload

    def _answer(
        self,
        method: str,
        operation: str,
        name: str | None,
        version: str | None,
        api_version: str | None,
        authorized: bool,
        authorization: str | None,
        body: bytes,
    ) -> tuple[int, dict[str, str], Any]:
        if not authorized:
            if authorization is None:
                text = "AKV10000: Request is missing a Bearer or PoP token."
            else:
                text = "AKV10022: Invalid audience or token."
            return 401, self._challenge(), _error("Unauthorized", text)
        if not api_version:
            return 400, {}, _error("BadParameter", "The api-version query parameter is required.")
        fault = self._take_fault(operation)
        if fault is not None:
            return self._fault_response(fault)
        if operation == "other" or name is None or version is None:
            return 404, {}, _error("NotFound", f"{method} is not implemented by the fake Key Vault")
        with self._lock:
            try:
                entry = self._find(name, version)
            except KeyError:
                shown = f"{name}/{version}" if version else name
                return (
                    404,
                    {},
                    _error("KeyNotFound", f"A key with (name/id) {shown} was not found in this key vault."),
                )
        if operation == "get":
            return 200, {}, self._bundle(entry)
        return self._sign(entry, body)

    def _take_fault(self, operation: str) -> KeyVaultFault | None:
        fault: KeyVaultFault | None = self._faults.take(lambda f: f.operation in (None, operation))
        return fault

    @staticmethod
    def _fault_response(fault: KeyVaultFault) -> tuple[int, dict[str, str], Any]:
        if fault.drop_connection:
            return 0, {}, None
        defaults = {
            400: ("BadParameter", "The request is invalid."),
            401: ("Unauthorized", "AKV10032: Invalid issuer."),
            403: (
                "Forbidden",
                "Caller is not authorized to perform action on resource. "
                "Action: 'Microsoft.KeyVault/vaults/keys/sign/action'",
            ),
            404: ("KeyNotFound", "A key with (name/id) was not found in this key vault."),
            429: (
                "Throttled",
                "Request was not allowed because application has exceeded the maximum "
                "requests per second for this vault.",
            ),
            500: ("InternalServerError", "An unexpected error occurred."),
            503: ("ServiceUnavailable", "The service is temporarily unavailable."),
        }
        code, message = defaults.get(fault.status, ("Error", "Injected failure."))
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        payload = _error(fault.code or code, message)
        if fault.status == 403:
            payload["error"]["innererror"] = {"code": "ForbiddenByRbac"}
        return fault.status, headers, payload

    def _jwk(self, entry: _KeyVersion) -> dict[str, Any]:
        key = entry.private_key
        jwk: dict[str, Any] = {"kid": self.key_url(entry.name, entry.version)}
        suffix = "-HSM" if entry.hsm else ""
        if isinstance(key, rsa.RSAPrivateKey):
            numbers = key.public_key().public_numbers()
            jwk.update(kty="RSA" + suffix, n=_b64url(_int_bytes(numbers.n)), e=_b64url(_int_bytes(numbers.e)))
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            crv = _CRV_BY_CURVE_NAME[key.curve.name]
            size = _CURVES[crv][2]
            point = key.public_key().public_numbers()
            jwk.update(
                kty="EC" + suffix,
                crv=crv,
                x=_b64url(_int_bytes(point.x, size)),
                y=_b64url(_int_bytes(point.y, size)),
            )
        else:
            raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk.update(kty="OKP" + suffix, crv="Ed25519", x=_b64url(raw))
        jwk["key_ops"] = list(entry.key_ops)
        return jwk

    def _bundle(self, entry: _KeyVersion) -> dict[str, Any]:
        return {
            "key": self._jwk(entry),
            "attributes": {
                "enabled": entry.enabled,
                "created": entry.created,
                "updated": entry.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
                "exportable": False,
            },
            "tags": {},
        }

    def _sign(self, entry: _KeyVersion, body: bytes) -> tuple[int, dict[str, str], Any]:
        kid = self.key_url(entry.name, entry.version)
        if not entry.enabled:
            return 403, {}, _error("Forbidden", "Operation sign is not allowed on a disabled key.")
        if "sign" not in entry.key_ops:
            return 403, {}, _error("Forbidden", "Operation sign is not permitted on this key.")
        try:
            request = json.loads(body)
            alg = str(request["alg"])
            digest = _b64url_decode(str(request["value"]))
        except (ValueError, KeyError, TypeError):
            return 400, {}, _error("BadParameter", "Property 'alg' and 'value' are required.")
        try:
            signature = _sign_digest(entry.private_key, alg, digest)
        except _BadRequest as exc:
            return 400, {}, _error("BadParameter", str(exc))
        return 200, {}, {"kid": kid, "value": _b64url(signature)}


def _legacy_fault(
    count: int = 1,
    *,
    status: int = 429,
    operation: Literal["get", "sign"] | None = None,
    retry_after: float | None = None,
    code: str | None = None,
) -> KeyVaultFault:
    if status == 0:
        return KeyVaultFault(operation=operation, count=count, drop_connection=True)
    return KeyVaultFault(status, operation, retry_after, code, count)


class _BadRequest(Exception):
    pass


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _sign_digest(key: PrivateKey, alg: str, digest: bytes) -> bytes:
    """What Key Vault's sign operation does: sign a digest the caller computed."""
    if isinstance(key, rsa.RSAPrivateKey):
        if alg[:2] not in ("RS", "PS") or alg[2:] not in _HASHES:
            raise _BadRequest(f"Algorithm {alg} is not supported for an RSA key.")
        chosen = _HASHES[alg[2:]]
        _check_digest(chosen, digest)
        pad: padding.AsymmetricPadding
        if alg.startswith("PS"):
            # Key Vault uses a salt as long as the hash, as RFC 7518 section 3.5 asks.
            pad = padding.PSS(mgf=padding.MGF1(chosen), salt_length=chosen.digest_size)
        else:
            pad = padding.PKCS1v15()
        return key.sign(digest, pad, Prehashed(chosen))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        crv = _CRV_BY_CURVE_NAME[key.curve.name]
        _, expected_alg, size = _CURVES[crv]
        if alg != expected_alg:
            raise _BadRequest(f"Algorithm {alg} is not supported for a {crv} key; use {expected_alg}.")
        chosen = _HASHES["256" if alg == "ES256K" else alg[2:]]
        _check_digest(chosen, digest)
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(chosen))))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise _BadRequest(f"Algorithm {alg} is not supported for this key type.")


def _check_digest(chosen: hashes.HashAlgorithm, digest: bytes) -> None:
    if len(digest) != chosen.digest_size:
        raise _BadRequest(f"The digest must be {chosen.digest_size} bytes for this algorithm.")


# -- test credentials ------------------------------------------------------------------------


class _CredentialRecord:
    def __init__(self, token: str, expires_in: int) -> None:
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        self._token = token
        self.expires_in = expires_in
        #: (scopes, tenant_id) of every token request, for assertions.
        self.calls: list[tuple[tuple[str, ...], str | None]] = []
        self.closed = False
        self._lock = threading.Lock()

    def _access_token(self, scopes: Sequence[str], tenant_id: str | None) -> AccessToken:
        from azure.core.credentials import AccessToken

        with self._lock:
            self.calls.append((tuple(scopes), tenant_id))
        return AccessToken(self._token, int(time.time()) + self.expires_in)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(calls={len(self.calls)})"


class FakeKeyVaultCredential(_CredentialRecord):
    """A synchronous ``TokenCredential`` that always returns ``token`` (never a real one).

    Records every ``get_token`` call's scopes and tenant in :attr:`calls`.
    """

    def __init__(self, token: str = DEFAULT_TOKEN, *, expires_in: int = 3600) -> None:
        super().__init__(token, expires_in)

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return self._access_token(scopes, tenant_id)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncFakeKeyVaultCredential(_CredentialRecord):
    """An ``AsyncTokenCredential`` that always returns ``token``; works under asyncio and
    trio (it does no I/O). Records calls in :attr:`calls`."""

    def __init__(self, token: str = DEFAULT_TOKEN, *, expires_in: int = 3600) -> None:
        super().__init__(token, expires_in)

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return self._access_token(scopes, tenant_id)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()
