"""A tiny forward proxy on 127.0.0.1 that records what it received, for the proxy tests.

It speaks the two ways an HTTP client uses a proxy: an absolute-form request
(``POST http://host:port/path HTTP/1.1``: a plain-http request, which the proxy reads in
clear and forwards) and ``CONNECT host:port`` (a tunnel: the proxy relays bytes it cannot
read, TLS end to end). Every byte the client sent to the proxy is kept in
:attr:`LoopbackProxy.received`, so a test can assert that a canary secret never reached
it in clear text. Targets other than loopback, and the ``aliases`` it maps to 127.0.0.1
(names such as ``auth.proxy.test`` that only the proxy resolves), are refused: a test proxy
must not reach out. Stopped by the test (``with LoopbackProxy() as proxy``); every loop is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["LoopbackProxy", "ProxyConnection"]

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")
_IDLE = 5.0  # seconds without a byte either way ends a tunnel
_MAX_HEAD = 64 * 1024


@dataclass
class ProxyConnection:
    """One client connection: its request line (``CONNECT 127.0.0.1:443 HTTP/1.1`` or
    ``POST http://127.0.0.1:8000/token HTTP/1.1``) and every byte the client sent."""

    request_line: str = ""
    received: bytearray = field(default_factory=bytearray)


class LoopbackProxy:
    """See the module docstring. ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, aliases: tuple[str, ...] = ()) -> None:
        self.aliases = frozenset(a.lower() for a in aliases)
        self.connections: list[ProxyConnection] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.received) for c in self.connections)

    @property
    def request_lines(self) -> list[str]:
        with self._lock:
            return [c.request_line for c in self.connections]

    def __enter__(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()

    # -- one connection ----------------------------------------------------------------

    def _handle(self, client: socket.socket) -> None:
        record = ProxyConnection()
        with self._lock:
            self.connections.append(record)
        client.settimeout(_IDLE)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                data = client.recv(65536)
                if not data:
                    return
                head += data
                with self._lock:
                    record.received += data
        line, _, _ = head.partition(b"\r\n")
        record.request_line = line.decode("latin-1")
        parts = record.request_line.split(" ")
        if len(parts) != 3:
            return
        method, target, _ = parts
        if method == "CONNECT":
            self._tunnel(client, target, record)
        else:
            self._forward(client, target, head, record)

    def _target(self, hostport: str) -> tuple[str, int] | None:
        host, _, port = hostport.rpartition(":")
        host = host.lower()
        if (host not in _LOOPBACK and host not in self.aliases) or not port.isdigit():
            return None
        return ("::1" if host in ("::1", "[::1]") else "127.0.0.1"), int(port)

    def _tunnel(self, client: socket.socket, hostport: str, record: ProxyConnection) -> None:
        target = self._target(hostport)
        if target is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection(target, timeout=_IDLE)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._relay(client, upstream, record)

    def _forward(self, client: socket.socket, url: str, head: bytes, record: ProxyConnection) -> None:
        # Absolute form: http://host:port/path. Forwarded with one request per connection.
        if not url.startswith("http://"):
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        hostport, _, path = url[len("http://") :].partition("/")
        target = self._target(hostport)
        if target is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        first, _, rest = head.partition(b"\r\n")
        method = first.split(b" ", 1)[0]
        rewritten = method + b" /" + path.encode("latin-1") + b" HTTP/1.1\r\n" + rest
        try:
            upstream = socket.create_connection(target, timeout=_IDLE)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            upstream.sendall(rewritten)
            self._relay(client, upstream, record)

    def _relay(self, client: socket.socket, upstream: socket.socket, record: ProxyConnection) -> None:
        sockets = [client, upstream]
        for _ in range(100_000):  # bounded; each turn moves bytes or waits at most _IDLE
            try:
                readable, _, _ = select.select(sockets, [], [], _IDLE)
            except (OSError, ValueError):
                return
            if not readable:
                return
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                other = upstream if sock is client else client
                if sock is client:
                    with self._lock:
                        record.received += data
                try:
                    other.sendall(data)
                except OSError:
                    return
