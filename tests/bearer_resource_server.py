"""A loopback resource server for Bearer tokens (RFC 6750), for the HTTP-client
integrations' tests (requests, aiohttp): it records every request and refuses the tokens
it is told to with ``401 WWW-Authenticate: Bearer error="invalid_token"``::

    with BearerResourceServer(known=lambda: server.issued, reject=1) as api:
        api.url + "/pockets"     # http://127.0.0.1:PORT/pockets
        api.records              # one ApiRecord per request: authorization, body, status

``known()`` returns the tokens the authorization server issued: any other token is
refused. ``reject``: the first ``reject`` distinct known tokens are refused too (and stay
refused), as an API does that revoked them; ``reject_all`` refuses every token. A request
without ``Authorization`` gets the bare challenge ``Bearer realm="api"``. Bodies are read
whole, ``Content-Length`` or chunked (a generator's or an async iterator's body). Its
lifecycle is the test kit's (``LoopbackServer``: ``start()``, ``stop()``, ``with``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from io import BufferedIOBase

from keyless_m2m.testing.emulators._base import LoopbackHTTPHandler, LoopbackServer

__all__ = ["ApiRecord", "BearerResourceServer", "read_chunked"]

MAX_BODY = 1 << 20


@dataclass(frozen=True)
class ApiRecord:
    method: str
    path: str
    authorization: str | None
    body: bytes
    status: int


def read_chunked(stream: BufferedIOBase) -> bytes:
    """A chunked body (RFC 9112 section 7.1), bounded by :data:`MAX_BODY`."""
    body = b""
    while len(body) <= MAX_BODY:
        size = int(stream.readline(64).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            stream.readline(64)  # the last CRLF (no trailers here)
            return body
        body += stream.read(size)
        stream.readline(64)
    raise ValueError("chunked body too large")


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent clients is queued, not reset (default 5)


class BearerResourceServer(LoopbackServer):
    """See the module docstring."""

    def __init__(
        self,
        *,
        known: Callable[[], Collection[str]],
        reject: int = 0,
        reject_all: bool = False,
        timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.known = known
        self.reject = reject
        self.reject_all = reject_all
        self.timeout = timeout
        self.rejected: set[str] = set()
        self.records: list[ApiRecord] = []
        self._lock = threading.Lock()
        self._httpd: _Listener | None = None
        self._thread: threading.Thread | None = None

    def authorizations(self) -> list[str | None]:
        with self._lock:
            return [r.authorization for r in self.records]

    def decide(self, authorization: str | None) -> tuple[int, str | None]:
        """(status, WWW-Authenticate) for one request."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return 401, 'Bearer realm="api"'
        with self._lock:
            refused = self.reject_all or token in self.rejected or token not in self.known()
            if not refused and len(self.rejected) < self.reject:
                self.rejected.add(token)
                refused = True
        if refused:
            return 401, 'Bearer realm="api", error="invalid_token", error_description="token refused"'
        return 200, None

    def record(self, record: ApiRecord) -> None:
        with self._lock:
            self.records.append(record)

    def _serve(self) -> int:
        self._httpd = _Listener((self.host, 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return int(self._httpd.server_address[1])

    def _shutdown(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _handler_for(server: BearerResourceServer) -> type[LoopbackHTTPHandler]:
    class Handler(LoopbackHTTPHandler):
        timeout = server.timeout  # bounded reads: a stalled client cannot hold a thread

        def _answer(self) -> None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                body = read_chunked(self.rfile)
            else:
                body = self.rfile.read(min(int(self.headers.get("Content-Length") or 0), MAX_BODY))
            authorization = self.headers.get("Authorization")
            status, challenge = server.decide(authorization)
            server.record(ApiRecord(self.command, self.path, authorization, body, status))
            headers = {"Content-Type": "application/json"}
            if challenge is not None:
                headers["WWW-Authenticate"] = challenge
            self.respond(status, headers, json.dumps({"ok": status == 200, "path": self.path}).encode())

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    return Handler
