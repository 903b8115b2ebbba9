"""A small, real OAuth 2.0 authorization server for tests and the demo.

It serves the client-credentials grant on loopback over real HTTP, verifies
``private_key_jwt`` assertions (signature, ``iss``/``sub``, ``aud`` = token endpoint or
issuer, ``exp``, replayed ``jti``) and client secrets (basic and post), and counts what
it sees. Knobs inject latency and failures, so tests can assert counts instead of times::

    with AuthorizationServer() as server:
        server.register_client("svc", jwks={"keys": [public_jwk]})
        server.token_endpoint     # http://127.0.0.1:PORT/token
        server.token_requests     # how many token requests arrived

It runs in its own thread (``ThreadingHTTPServer``), so asyncio, trio and blocking code
can all use it. Not for production.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from ..client_auth import CLIENT_ASSERTION_TYPE

__all__ = ["AuthorizationServer", "Fault", "RegisteredClient"]


@dataclass
class RegisteredClient:
    client_id: str
    jwks: Mapping[str, Any] | None = None
    client_secret: str | None = None
    scopes: frozenset[str] | None = None  # None: any scope


@dataclass
class Fault:
    """A canned answer for the next ``count`` token requests (``count=None``: until cleared).

    ``status``/``body``/``headers`` are the answer; ``status=None`` answers as the server
    normally would (a real token or refusal) and only shapes how it is delivered.
    Delivery faults: ``drop_connection`` closes the connection without a byte of answer;
    ``delay`` waits that many seconds before the status line (slow headers: a client read
    timeout); ``slow_body`` sends the headers and half the body, then waits that long
    before the rest (a stalled body); ``reset_after`` sends the headers and that many body
    bytes, then resets the connection (TCP RST, the rest never arrives).
    """

    status: int | None = 503
    body: bytes | str | Mapping[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    count: int | None = 1
    drop_connection: bool = False
    delay: float = 0.0
    slow_body: float = 0.0
    reset_after: int | None = None


class AuthorizationServer:
    """Loopback authorization server; see the module docstring.

    ``expires_in`` sets the token lifetime; ``latency`` delays every token response;
    ``faults`` queues :class:`Fault` answers; ``token_requests`` and ``issued`` count.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        expires_in: float = 3600,
        latency: float = 0.0,
        token_path: str = "/token",  # noqa: S107 - a URL path
    ) -> None:
        self.expires_in = expires_in
        self.latency = latency
        self.token_path = token_path
        self.clients: dict[str, RegisteredClient] = {}
        self.faults: list[Fault] = []
        self.token_requests = 0
        self.issued: list[str] = []
        self.on_request: Callable[[dict[str, list[str]]], None] | None = None
        self.fault_policy: Callable[[int], Fault | None] | None = None
        self.clock_offset = 0.0
        self.statuses: list[int] = []  # per token request: the status sent, 0 if none was
        self._stopping = threading.Event()
        self._handler = _handler_for(self)
        self._seen_jti: dict[str, float] = {}
        self._lock = threading.Lock()
        self._httpd = self._listen((host, port))
        self._thread: threading.Thread | None = None
        self._connections: set[Any] = set()

    # -- addresses ----------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + self.token_path

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt",
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [
                "RS256",
                "RS384",
                "RS512",
                "PS256",
                "PS384",
                "PS512",
                "ES256",
                "ES384",
                "ES512",
                "EdDSA",
            ],
        }

    # -- configuration ------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        jwks: Mapping[str, Any] | None = None,
        public_jwk: Mapping[str, Any] | None = None,
        client_secret: str | None = None,
        scopes: Iterable[str] | None = None,
    ) -> RegisteredClient:
        if public_jwk is not None:
            jwks = {"keys": [dict(public_jwk)]}
        client = RegisteredClient(
            client_id, jwks, client_secret, frozenset(scopes) if scopes is not None else None
        )
        self.clients[client_id] = client
        return client

    def fail_next(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # -- lifecycle ----------------------------------------------------------------------

    def _listen(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        httpd = ThreadingHTTPServer(address, self._handler)
        httpd.daemon_threads = True
        return httpd

    def start(self) -> AuthorizationServer:
        """Serve (again: after :meth:`stop`, on the same address, with the same clients)."""
        if self._thread is None:
            if self._httpd.socket.fileno() < 0:  # stopped: listen again on the same port
                self._httpd = self._listen(self._httpd.server_address[:2])  # type: ignore[arg-type]
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections (clients then see refusals).

        Pending ``delay``/``slow_body`` faults end at once. :meth:`start` serves again."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> AuthorizationServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the token endpoint -------------------------------------------------------------

    def _next_fault(self, request_number: int) -> Fault | None:
        with self._lock:
            if not self.faults:
                policy = self.fault_policy
                return policy(request_number) if policy is not None else None
            fault = self.faults[0]
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.pop(0)
            return fault

    def handle_token_request(
        self, form: dict[str, list[str]], authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Decide one token request: (status, JSON body)."""

        def one(name: str) -> str | None:
            values = form.get(name)
            if values is None:
                return None
            return values[0] if len(values) == 1 else "\x00duplicate"

        if one("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client = self._authenticate(form, authorization, one)
        if isinstance(client, tuple):
            return client
        requested = frozenset((one("scope") or "").split())
        if client.scopes is not None and not requested <= client.scopes:
            return 400, {"error": "invalid_scope", "error_description": "requested scope is not allowed"}
        token = "at_" + secrets.token_urlsafe(24)
        with self._lock:
            self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        if requested:
            body["scope"] = " ".join(sorted(requested))
        return 200, body

    def _authenticate(
        self,
        form: dict[str, list[str]],
        authorization: str | None,
        one: Callable[[str], str | None],
    ) -> RegisteredClient | tuple[int, dict[str, Any]]:
        invalid = (401, {"error": "invalid_client"})
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:], validate=True).decode()
                raw_id, _, raw_secret = decoded.partition(":")
                client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            except ValueError:
                return invalid
            return self._check_secret(client_id, secret) or invalid
        if one("client_assertion_type") == CLIENT_ASSERTION_TYPE:
            return self._check_assertion(one("client_assertion") or "", one("client_id")) or invalid
        post_id, post_secret = one("client_id"), one("client_secret")
        if post_id and post_secret:
            return self._check_secret(post_id, post_secret) or invalid
        return invalid

    def _check_secret(self, client_id: str, secret: str) -> RegisteredClient | None:
        client = self.clients.get(client_id)
        if client is None or client.client_secret is None:
            return None
        if not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
            return None
        return client

    def _check_assertion(self, assertion: str, form_client_id: str | None) -> RegisteredClient | None:
        try:
            token = jws.JWS()
            token.deserialize(assertion)
            claims = json.loads(token.objects["payload"])
            header = token.jose_header
        except (JWException, ValueError, KeyError, TypeError):
            return None
        if not isinstance(claims, dict):
            return None
        client = self.clients.get(str(claims.get("iss")))
        if client is None or client.jwks is None or claims.get("sub") != client.client_id:
            return None
        if form_client_id is not None and form_client_id != client.client_id:
            return None
        keys = jwk.JWKSet.from_json(json.dumps(client.jwks))
        candidates = [k for k in keys if header.get("kid") in (None, k.get("kid"))] or list(keys)
        for key in candidates:
            try:
                token.verify(key, alg=header.get("alg"))
                break
            except (JWException, ValueError, TypeError):
                continue
        else:
            return None
        now = time.time()
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not ({self.token_endpoint, self.issuer} & set(a for a in auds if isinstance(a, str))):
            return None
        exp, jti = claims.get("exp"), claims.get("jti")
        if not isinstance(exp, int | float) or exp < now - 5 or not isinstance(jti, str) or not jti:
            return None
        with self._lock:
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e >= now - 5}
            if jti in self._seen_jti:
                return None  # replay
            self._seen_jti[jti] = float(exp)
        return client


def _handler_for(server: AuthorizationServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: tests read counters, not logs

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header follows the server's (possibly skewed) clock.
            when = time.time() + server.clock_offset if timestamp is None else timestamp
            return formatdate(when, usegmt=True)

        def _send(
            self,
            status: int,
            body: bytes | str | Mapping[str, Any],
            headers: Mapping[str, str] = {},
            fault: Fault | None = None,
        ) -> None:
            if isinstance(body, Mapping):
                payload = json.dumps(body).encode()
                content_type = "application/json"
            else:
                payload = body.encode() if isinstance(body, str) else body
                content_type = headers.get("Content-Type", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                if name.lower() != "content-type":
                    self.send_header(name, value)
            self.end_headers()
            if fault is not None and fault.reset_after is not None:
                self.wfile.write(payload[: fault.reset_after])
                self._reset()
                return
            if fault is not None and fault.slow_body > 0:
                half = len(payload) // 2
                self.wfile.write(payload[:half])
                self.wfile.flush()
                server._stopping.wait(fault.slow_body)
                payload = payload[half:]
            self.wfile.write(payload)

        def _reset(self) -> None:
            # SO_LINGER 0: close() sends RST instead of FIN, as a crashing proxy would.
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()

        def do_GET(self) -> None:
            if self.path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                self._send(200, server.metadata())
            else:
                self._send(404, {"error": "not_found"})

        def do_POST(self) -> None:
            try:
                self._token_request()
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (its read timeout during a delay fault).
                self.close_connection = True

        def _token_request(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            if self.path != server.token_path:
                self._send(404, {"error": "not_found"})
                return
            with server._lock:
                server.token_requests += 1
                number = server.token_requests
            form = parse_qs(raw, keep_blank_values=True)
            if server.on_request is not None:
                server.on_request(form)
            if server.latency:
                time.sleep(server.latency)
            fault = server._next_fault(number)
            if fault is not None and fault.delay > 0:
                server._stopping.wait(fault.delay)
            if fault is not None and fault.drop_connection:
                self._record(0)
                self.close_connection = True
                self.connection.close()
                return
            if fault is not None and fault.status is not None:
                self._record(0 if fault.reset_after is not None else fault.status)
                self._send(fault.status, fault.body, fault.headers, fault)
                return
            status, body = server.handle_token_request(form, self.headers.get("Authorization"))
            self._record(0 if fault is not None and fault.reset_after is not None else status)
            self._send(status, body, {}, fault)

        def _record(self, status: int) -> None:
            with server._lock:
                server.statuses.append(status)

    return Handler
