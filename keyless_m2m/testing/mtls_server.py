"""An :class:`~keyless_m2m.testing.authorization_server.AuthorizationServer` over mutual
TLS (RFC 8705), for tests of ``tls_client_auth``, ``self_signed_tls_client_auth`` and
certificate-bound tokens::

    authority = TestAuthority(str(tmp_path))
    client = authority.issue_client("billing")
    with MutualTlsAuthorizationServer(authority) as server:
        server.register_tls_client("billing", subject_dn=client.subject_dn)
        server.token_endpoint           # https://127.0.0.1:PORT/token
        server.bindings[token.value]    # the x5t#S256 the token is bound to

It serves HTTPS with a server certificate from ``authority`` and asks every client for a
certificate (``require_certificate=True``: the handshake fails without one, as a server
that accepts only mTLS does; by default a client without one connects and is refused at
the OAuth level). The TLS layer trusts ``authority``'s CA and every self-signed
certificate registered; the OAuth layer then checks the certificate against the client's
registration: the subject DN (RFC 4514) or a DNS SAN for ``tls_client_auth`` (section
2.1.2), the ``x5t#S256`` for ``self_signed_tls_client_auth`` (section 2.2.2). Every token
issued on a connection that presented a certificate is bound to it (section 3):
:attr:`MutualTlsAuthorizationServer.bindings` maps the token to the thumbprint, and the
metadata says ``tls_client_certificate_bound_access_tokens``. ``mtls_alias=`` publishes
an ``mtls_endpoint_aliases.token_endpoint`` (section 5). Not for production.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

from cryptography import x509

from .authorization_server import AuthorizationServer, RegisteredClient, _Server
from .tls import TestAuthority

__all__ = ["MutualTlsAuthorizationServer", "TlsRegistration", "certificate_thumbprint"]

_HANDSHAKE_TIMEOUT = 5.0


def _linger(connection: ssl.SSLSocket) -> None:
    """After a failed handshake, read what the client still sends (its request) before
    closing, as servers do: closing with unread data makes the kernel send a reset, which
    may destroy the TLS alert before the client reads it."""
    connection.settimeout(0.5)
    with contextlib.suppress(OSError):
        socket.socket.shutdown(connection, socket.SHUT_WR)
        for _ in range(64):
            if not socket.socket.recv(connection, 65536):
                break


def certificate_thumbprint(der: bytes) -> str:
    """``x5t#S256`` of a DER certificate (RFC 8705 section 3.1)."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class TlsRegistration:
    """How a client is known by its certificate: ``method`` (``tls_client_auth`` or
    ``self_signed_tls_client_auth``), and ``subject_dn`` / ``san_dns`` or ``thumbprint``."""

    method: str
    subject_dn: str | None = None
    san_dns: str | None = None
    thumbprint: str | None = None


class MutualTlsAuthorizationServer(AuthorizationServer):
    """See the module docstring. ``handshake_failures`` counts handshakes that failed
    (a client without a certificate when one is required, an untrusted certificate)."""

    def __init__(
        self,
        authority: TestAuthority,
        *,
        require_certificate: bool = False,
        mtls_alias: str | None = None,
        host: str = "127.0.0.1",
        **options: Any,
    ) -> None:
        self.authority = authority
        self.require_certificate = require_certificate
        self.mtls_alias = mtls_alias
        mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
        self.tls_context = authority.server_context(host, verify_clients=mode)
        self.tls_clients: dict[str, TlsRegistration] = {}
        self.bindings: dict[str, str] = {}  # access token -> x5t#S256 of the certificate
        self.handshake_failures = 0
        self.peer_thumbprints: list[str | None] = []  # per token request: the certificate shown
        self._peer = threading.local()
        super().__init__(host=host, **options)

    @property
    def issuer(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    def metadata(self) -> dict[str, Any]:
        document = super().metadata()
        document["token_endpoint_auth_methods_supported"] = [
            *document["token_endpoint_auth_methods_supported"],
            "tls_client_auth",
            "self_signed_tls_client_auth",
        ]
        document["tls_client_certificate_bound_access_tokens"] = True
        if self.mtls_alias is not None:
            document["mtls_endpoint_aliases"] = {"token_endpoint": self.mtls_alias}
        return document

    def register_tls_client(
        self,
        client_id: str,
        *,
        subject_dn: str | None = None,
        san_dns: str | None = None,
        self_signed_pem: bytes | None = None,
        scopes: Any = None,
    ) -> RegisteredClient:
        """Register ``client_id`` for ``tls_client_auth`` (``subject_dn`` or ``san_dns``)
        or, with ``self_signed_pem`` (its certificate), ``self_signed_tls_client_auth``."""
        if self_signed_pem is not None:
            certificate = x509.load_pem_x509_certificate(self_signed_pem)
            from cryptography.hazmat.primitives.serialization import Encoding

            der = certificate.public_bytes(Encoding.DER)
            self.tls_context.load_verify_locations(cadata=der)  # the TLS layer accepts it
            registration = TlsRegistration(
                "self_signed_tls_client_auth", thumbprint=certificate_thumbprint(der)
            )
        elif subject_dn is not None or san_dns is not None:
            registration = TlsRegistration("tls_client_auth", subject_dn=subject_dn, san_dns=san_dns)
        else:
            raise ValueError("pass subject_dn=, san_dns= or self_signed_pem=")
        self.tls_clients[client_id] = registration
        return self.register_client(client_id, scopes=scopes)

    # -- the connection's certificate ---------------------------------------------------

    def _listen(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        server = self

        class TlsServer(_Server):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, peer = super().get_request()
                # The handshake runs in the connection's thread (setup), never here: a
                # client that stalls it must not hold up the accept loop.
                tls = server.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return tls, peer

            def handle_error(self, request: Any, client_address: Any) -> None:
                return  # a failed handshake is counted, not printed

        base = self._handler

        class TlsHandler(base):  # type: ignore[valid-type,misc]
            def setup(self) -> None:
                connection: ssl.SSLSocket = self.request
                connection.settimeout(_HANDSHAKE_TIMEOUT)
                try:
                    connection.do_handshake()
                except (OSError, ssl.SSLError):
                    with server._lock:
                        server.handshake_failures += 1
                    _linger(connection)
                    raise
                connection.settimeout(None)
                der = connection.getpeercert(binary_form=True)
                server._peer.der = der
                super().setup()

        httpd = TlsServer(address, TlsHandler)
        return httpd

    def _peer_certificate(self) -> bytes | None:
        der: bytes | None = getattr(self._peer, "der", None)
        return der

    # -- the token endpoint -------------------------------------------------------------

    def handle_token_request(
        self, form: dict[str, list[str]], authorization: str | None, **options: Any
    ) -> tuple[int, dict[str, Any]]:
        # **options: what the base class takes besides (e.g. the DPoP proofs), passed on.
        der = self._peer_certificate()
        thumbprint = certificate_thumbprint(der) if der else None
        with self._lock:
            self.peer_thumbprints.append(thumbprint)
        status, body = super().handle_token_request(form, authorization, **options)
        if status == 200 and thumbprint is not None:
            with self._lock:
                self.bindings[body["access_token"]] = thumbprint  # RFC 8705 section 3
        return status, body

    def _authenticate(
        self,
        form: dict[str, list[str]],
        authorization: str | None,
        one: Callable[[str], str | None],
    ) -> RegisteredClient | tuple[int, dict[str, Any]]:
        client_id = one("client_id")
        registration = self.tls_clients.get(client_id or "")
        other = authorization or one("client_assertion") or one("client_secret")
        if registration is None or other:
            return super()._authenticate(form, authorization, one)
        checked = self._check_certificate(client_id or "", registration)
        if isinstance(checked, str):
            return 401, {"error": "invalid_client", "error_description": checked}
        return checked

    def _check_certificate(self, client_id: str, registration: TlsRegistration) -> RegisteredClient | str:
        der = self._peer_certificate()
        if not der:
            return f"{registration.method}: no client certificate was presented"
        if registration.method == "self_signed_tls_client_auth":
            if certificate_thumbprint(der) != registration.thumbprint:
                return "self_signed_tls_client_auth: the certificate is not the one registered"
            return self.clients[client_id]
        certificate = x509.load_der_x509_certificate(der)
        if certificate.issuer != self.authority.name:
            return "tls_client_auth: the certificate was not issued by the trusted CA"
        if registration.subject_dn is not None:
            if certificate.subject.rfc4514_string() != registration.subject_dn:
                return "tls_client_auth: the certificate's subject does not match tls_client_auth_subject_dn"
        elif registration.san_dns is not None:
            try:
                names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                dns = names.value.get_values_for_type(x509.DNSName)
            except x509.ExtensionNotFound:
                dns = []
            if registration.san_dns not in dns:
                return "tls_client_auth: the certificate has no DNS SAN matching tls_client_auth_san_dns"
        return self.clients[client_id]
