"""Loopback doubles of the platforms that issue workload-identity JWTs, for the
``keyless_m2m.assertions`` tests.

- :class:`TestIssuer`: a platform's signing key (P-256) and its JWKS; :meth:`TestIssuer.mint`
  issues a JWT for a subject and audience (``lifetime`` may be negative: already expired).
- :class:`PlatformEndpoint`: one HTTP server on loopback that plays both the GitHub Actions
  OIDC token endpoint (``GET /github?api-version=2.0&audience=...`` with a Bearer request
  token, answering ``{"value": JWT}``) and the GCP metadata server (``GET
  /computeMetadata/v1/instance/service-accounts/default/identity?audience=...&format=full``
  with ``Metadata-Flavor: Google``, answering the JWT as text). Each request is recorded
  (path, query, headers); ``answers`` queues canned ``(status, body)`` answers, else it
  mints a fresh JWT for the requested audience.

Runs in its own thread; :meth:`PlatformEndpoint.stop` (or ``with``) ends it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from jwcrypto import jwk, jws

from keyless_m2m.assertions import JWT_BEARER
from keyless_m2m.testing.authorization_server import FederatedCredential

__all__ = ["GITHUB_REQUEST_TOKEN", "PlatformEndpoint", "Received", "TestIssuer"]

GITHUB_REQUEST_TOKEN = "ghs-request-token-canary-7f3a9c1e5b2d4f60"


class TestIssuer:
    """A platform's issuer: its key, its JWKS, and JWTs signed with it."""

    __test__ = False  # not a pytest test class

    def __init__(self, issuer: str = "https://platform.example", kid: str = "platform-1") -> None:
        self.issuer = issuer
        self.key = jwk.JWK.generate(kty="EC", crv="P-256", kid=kid)
        self.minted = 0

    @property
    def jwks(self) -> dict[str, Any]:
        public = json.loads(self.key.export_public())
        return {"keys": [{**public, "alg": "ES256", "use": "sig"}]}

    def mint(self, subject: str, audience: str, *, lifetime: float = 600, **claims: Any) -> str:
        now = int(time.time())
        self.minted += 1
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now if lifetime > 0 else now - 3600,
            "exp": int(now + lifetime),
            "n": self.minted,  # every JWT differs from the one before
            **claims,
        }
        token = jws.JWS(json.dumps(payload))
        token.add_signature(self.key, alg="ES256", protected={"alg": "ES256", "kid": self.key.get("kid")})
        return str(token.serialize(compact=True))

    def credential(
        self, subject: str, audience: str, *, assertion_type: str = JWT_BEARER, issuer: str | None = "same"
    ) -> FederatedCredential:
        return FederatedCredential(
            issuer=self.issuer if issuer == "same" else issuer,
            jwks=self.jwks,
            subject=subject,
            audience=audience,
            assertion_type=assertion_type,
        )


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class PlatformEndpoint:
    issuer: TestIssuer
    subject: str = "repo:example/app:ref:refs/heads/main"
    lifetime: float = 600
    answers: deque[tuple[int, str | bytes]] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def github_url(self) -> str:
        return f"http://{self.address}/github?api-version=2.0"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def answer(self, path: str, query: dict[str, list[str]], headers: dict[str, str]) -> tuple[int, bytes]:
        with self._lock:
            self.received.append(Received(path, query, headers))
            canned = self.answers.popleft() if self.answers else None
        if canned is not None:
            status, body = canned
            return status, body.encode() if isinstance(body, str) else body
        audience = (query.get("audience") or ["https://github.com/example"])[0]
        if path == "/github":
            if headers.get("authorization") != f"Bearer {GITHUB_REQUEST_TOKEN}":
                return 401, b'{"message": "bad request token"}'
            jwt = self.issuer.mint(self.subject, audience, lifetime=self.lifetime)
            return 200, json.dumps({"count": 1, "value": jwt}).encode()
        if path.startswith("/computeMetadata/v1/instance/service-accounts/"):
            if headers.get("metadata-flavor") != "Google":
                return 403, b"Missing Metadata-Flavor:Google header."
            return 200, self.issuer.mint(self.subject, audience, lifetime=self.lifetime).encode()
        return 404, b"not found"


def _handler_for(endpoint: PlatformEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body = endpoint.answer(url.path, parse_qs(url.query), headers)
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body.startswith(b"{") else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
