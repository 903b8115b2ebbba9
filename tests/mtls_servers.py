"""A loopback resource server that accepts certificate-bound access tokens (RFC 8705
section 3) only on a connection presenting the certificate they are bound to.

``GET /resource`` with ``Authorization: Bearer <token>``: ``binding_of(token)`` says the
``x5t#S256`` the token is bound to (``None``: an unknown token); the server compares it with
the SHA-256 thumbprint of the connection's client certificate and answers 200, or 401
``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750 section 3.1) saying why.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from keyless_m2m.testing.mtls_server import certificate_thumbprint

__all__ = ["CertificateBoundResourceServer"]


class CertificateBoundResourceServer:
    """See the module docstring; ``answers`` records ``(status, reason)`` per request."""

    def __init__(self, context: ssl.SSLContext, binding_of: Callable[[str], str | None]) -> None:
        self.binding_of = binding_of
        self.answers: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                connection: ssl.SSLSocket = self.connection
                der = connection.getpeercert(binary_form=True)
                status, reason = server.decide(self.headers.get("Authorization") or "", der)
                with server._lock:
                    server.answers.append((status, reason))
                body = json.dumps({"ok": status == 200, "reason": reason}).encode()
                self.send_response(status)
                if status == 401:
                    self.send_header(
                        "WWW-Authenticate", f'Bearer error="invalid_token", error_description="{reason}"'
                    )
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class TlsServer(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, peer = super().get_request()
                sock.settimeout(5.0)
                return context.wrap_socket(sock, server_side=True), peer

            def handle_error(self, request: Any, client_address: Any) -> None:
                return

        self._httpd = TlsServer(("127.0.0.1", 0), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"https://{host!s}:{port}/resource"

    def decide(self, authorization: str, der: bytes | None) -> tuple[int, str]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, "no bearer token"
        bound = self.binding_of(token)
        if bound is None:
            return 401, "unknown or unbound token"
        if not der:
            return 401, "the token is certificate-bound and no client certificate was presented"
        if certificate_thumbprint(der) != bound:
            return 401, "the client certificate is not the one the token is bound to"
        return 200, "bound token on its certificate"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._httpd.server_close()
