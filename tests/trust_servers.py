"""Loopback HTTPS servers with their own throwaway CA, for the trust-boundary and proxy tests.

:class:`TlsAuthServer` serves authorization server metadata (``GET /.well-known/...``) and a
token endpoint (``POST /token``) over TLS on 127.0.0.1, with a certificate for the names
given (a name such as ``auth.proxy.test`` is reached through :class:`tests.loopback_proxy.
LoopbackProxy`, which maps it to 127.0.0.1). It records every request body, and its
metadata can name any token endpoint (a hostile server's). Stopped by the test.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["TlsAuthServer", "named_tls"]


def named_tls(directory: str, names: tuple[str, ...], label: str = "ca") -> tuple[str, ssl.SSLContext]:
    """``(CA file, server context)``: a throwaway CA and a leaf for ``names`` (DNS names or IPs)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"keyless-m2m test {label}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = os.path.join(directory, f"{label}.pem")
    with open(ca_file, "wb") as fh:
        fh.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain = os.path.join(directory, f"{label}-server.pem")
    fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(leaf.public_bytes(serialization.Encoding.PEM))
        fh.write(
            leaf_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(chain)
    finally:
        os.unlink(chain)
    return ca_file, context


class TlsAuthServer:
    """Metadata and a token endpoint over TLS on 127.0.0.1; see the module docstring.

    ``host`` is the name put in its URLs (``127.0.0.1`` or a name a proxy maps). The
    metadata names ``token_endpoint`` (default: this server's ``/token``).
    """

    def __init__(self, directory: str, *, host: str = "127.0.0.1", label: str = "ca") -> None:
        self.host = host
        self.ca_file, context = named_tls(directory, (host, "127.0.0.1"), label)
        self.token_bodies: list[bytes] = []
        self.metadata_requests = 0
        self.token_endpoint_override: str | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def issuer(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return self.token_endpoint_override or self.issuer + "/token"

    @property
    def token_requests(self) -> int:
        with self._lock:
            return len(self.token_bodies)

    def __enter__(self) -> TlsAuthServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.startswith("/.well-known/"):
                    with server._lock:
                        server.metadata_requests += 1
                    self._send(
                        200,
                        {
                            "issuer": server.issuer,
                            "token_endpoint": server.token_endpoint,
                            "grant_types_supported": ["client_credentials"],
                        },
                    )
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._lock:
                    server.token_bodies.append(body)
                self._send(200, {"access_token": "tls-token", "token_type": "Bearer", "expires_in": 300})

        return Handler
