"""A hostile loopback token endpoint that echoes what it was sent.

The path says what to echo and where: ``POST /<channel>/<form>``. ``form`` names one
form of the credentials as the server received them (:func:`forms_of`: the whole body,
the Basic header, its base64 part, the decoded ``id:secret`` pair, the form-encoded
secret, the assertion, one of its segments, a 16-character prefix, ...); ``channel`` names
where the echo goes (:data:`CHANNELS`: ``error_description``, ``error_uri``, the error
code, a response header, the status line's reason phrase, the content type of a non-JSON
answer, the content coding, ``token_type``, or an extra member of a successful token
response). Every request is recorded (raw body and ``Authorization`` header), so a test
learns every credential the client sent and can forbid it.

Runs in its own thread; :meth:`EchoServer.stop` ends it. For tests only.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote_plus

__all__ = ["CHANNELS", "EchoServer", "Received", "forms_of"]

CHANNELS = (
    "description",
    "uri",
    "code",
    "header",
    "reason",
    "content-type",
    "content-encoding",
    "token-type",
    "raw",
)
PREFIX = 16  # a truncated echo: the first 16 characters of a secret value


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def forms_of(body: str, authorization: str | None) -> dict[str, str]:
    """Every form of the credentials in one request, as the server received them."""
    out: dict[str, str] = {"body": body}
    fields = parse_qs(body, keep_blank_values=True)
    encoded = dict(pair.split("=", 1) for pair in body.split("&") if "=" in pair)
    if "client_secret" in fields:
        out["secret"] = fields["client_secret"][0]
        out["secret-form"] = encoded["client_secret"]
    if authorization and authorization.startswith("Basic "):
        out["authorization"] = authorization
        out["basic-b64"] = authorization.split(" ", 1)[1]
        pair = base64.b64decode(out["basic-b64"]).decode()
        out["basic-pair"] = pair
        client_id, secret_form = pair.split(":", 1)
        out["secret-form"] = secret_form
        out["secret"] = unquote_plus(secret_form)
        out["basic-pair-decoded"] = f"{unquote_plus(client_id)}:{out['secret']}"
    if "secret" in out:
        out["secret-form-lower"] = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), out["secret-form"])
        out["secret-quoted"] = quote(out["secret"], safe="")
        out["secret-prefix"] = out["secret"][:PREFIX]
    if "client_assertion" in fields:
        assertion = fields["client_assertion"][0]
        header, claims, signature = assertion.split(".")
        out["assertion"] = assertion
        out["assertion-header"] = header
        out["assertion-claims"] = claims
        out["signature"] = signature
        out["signature-b64"] = base64.b64encode(_b64url_decode(signature)).decode()
        out["signature-prefix"] = signature[:PREFIX]
    return out


@dataclass
class Received:
    path: str
    body: str
    authorization: str | None

    def forms(self) -> dict[str, str]:
        return forms_of(self.body, self.authorization)


def _answer(channel: str, echo: str) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """(status, reason phrase, headers, body) echoing ``echo`` through ``channel``."""
    as_json = [(b"Content-Type", b"application/json")]

    def payload(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj).encode()

    raw = echo.encode("utf-8")
    if channel == "description":
        return 400, b"Bad Request", as_json, payload({"error": "invalid_client", "error_description": echo})
    if channel == "uri":
        return 400, b"Bad Request", as_json, payload({"error": "invalid_client", "error_uri": echo})
    if channel == "code":
        return 400, b"Bad Request", as_json, payload({"error": echo})
    if channel == "header":
        return 400, b"Bad Request", [*as_json, (b"X-Echo", raw)], payload({"error": "invalid_client"})
    if channel == "reason":
        return 400, raw, as_json, payload({"error": "invalid_client"})
    if channel == "content-type":
        return 400, b"Bad Request", [(b"Content-Type", raw + b"; charset=utf-8")], b"refused"
    if channel == "content-encoding":
        return 400, b"Bad Request", [(b"Content-Type", b"text/plain"), (b"Content-Encoding", raw)], b"x"
    if channel == "token-type":
        return (
            200,
            b"OK",
            as_json,
            payload({"access_token": "echo-token", "token_type": echo, "expires_in": 60}),
        )
    if channel == "raw":
        body = {"access_token": "echo-token", "token_type": "Bearer", "expires_in": 60, "echo": echo}
        return 200, b"OK", as_json, payload(body)
    raise ValueError(channel)


class EchoServer:
    """``with EchoServer() as server: server.url("description", "secret")``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, channel: str, form: str) -> str:
        return f"{self.origin}/{channel}/{form}"

    def forbidden(self) -> set[str]:
        """Every credential form of every request so far (8 characters or more)."""
        with self._lock:
            received = list(self.received)
        values: set[str] = set()
        for request in received:
            values.update(v for k, v in request.forms().items() if k != "body" and len(v) >= 8)
        return values

    def start(self) -> EchoServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="echo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler_for(server: EchoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _write(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            lines = [b"HTTP/1.1 %d %s" % (status, reason)]
            headers = [
                *headers,
                (b"Date", formatdate(usegmt=True).encode()),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"),
            ]
            lines += [name + b": " + value for name, value in headers]
            self.wfile.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            self.wfile.flush()
            self.close_connection = True

        def do_GET(self) -> None:  # metadata and doctor's clock check
            self._write(404, b"Not Found", [(b"Content-Type", b"application/json")], b'{"error":"not_found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            request = Received(self.path, body, self.headers.get("Authorization"))
            with server._lock:
                server.received.append(request)
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] not in CHANNELS:
                self._write(404, b"Not Found", [], b"")
                return
            channel, form = parts
            echo = request.forms().get(form)
            if echo is None:  # that form is not in this request (e.g. an assertion in Basic)
                self._write(418, b"No Such Form", [(b"Content-Type", b"text/plain")], b"no such form")
                return
            self._write(*_answer(channel, echo))

    return Handler
