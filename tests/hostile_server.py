"""A hostile loopback HTTP/1.1 server: answers that trickle, lie about their length, or
inflate without bound, for tests that check the library's deadlines and bounds.

Each connection gets one thread that reads one request and writes one scripted
:class:`Answer`, then closes. Every loop is bounded (by the answer's length) and every wait
ends as soon as :meth:`HostileServer.stop` is called, so a test never leaves a thread
behind::

    with HostileServer() as server:
        server.answers["/token"] = Answer(body=b"{}", trickle_head=1.0)
        url = server.url("/token")
        ...
        server.requests   # ["POST /token", ...]

and what the bounds are measured with: :func:`gzip_stream` builds a (nested) bomb without
holding its decoded size, :func:`peak_growth` samples the peak RSS while a call runs.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import anyio

from keyless_m2m import KeylessM2MError

__all__ = ["Answer", "HostileServer", "gzip_stream", "peak_growth"]

_MAX_REQUEST = 1024 * 1024


@dataclass
class Answer:
    """What to send: ``status``, ``headers`` and ``body``, and how.

    ``trickle_head``: seconds between the bytes of the status line and headers (0: all at
    once); ``trickle_body``: the same for the body; ``content_length``: the length to
    claim (default: the body's); ``chunk``: bytes per write when not trickling.
    """

    status: int = 200
    headers: Sequence[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0
    trickle_head: float = 0.0
    trickle_body: float = 0.0
    content_length: int | None = None
    chunk: int = 64 * 1024

    def head(self) -> bytes:
        length = len(self.body) if self.content_length is None else self.content_length
        lines = [f"HTTP/1.1 {self.status} Hostile", f"content-length: {length}", "connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HostileServer:
    """See the module docstring. ``ssl_context`` serves HTTPS with it."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.connections = 0
        self.bytes_sent = 0
        self._ssl = ssl_context
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)

    def url(self, path: str = "/") -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        assert not any(t.is_alive() for t in self._threads), "a hostile server thread did not stop"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        connection: socket.socket = raw
        try:
            raw.settimeout(5)
            if self._ssl is not None:
                connection = self._ssl.wrap_socket(raw, server_side=True)
            request = self._read_request(connection)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            path = request.split(" ", 2)[1]
            answer = self.answers.get(path.split("?")[0], Answer(status=404))
            if answer.delay and self._stopping.wait(answer.delay):
                return
            self._send(connection, answer.head(), answer.trickle_head, answer.chunk)
            self._send(connection, answer.body, answer.trickle_body, answer.chunk)
        except (OSError, ssl.SSLError):
            pass  # the client went away (or refused our certificate): nothing to answer
        finally:
            with contextlib.suppress(OSError):
                connection.close()

    def _read_request(self, connection: socket.socket) -> str | None:
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > _MAX_REQUEST or self._stopping.is_set():
                return None
            piece = connection.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = min(int(value.strip()), _MAX_REQUEST)
        while len(body) < length:
            piece = connection.recv(65536)
            if not piece:
                return None
            body += piece
        method, path = lines[0].split(" ")[:2]
        return f"{method} {path}"

    def _send(self, connection: socket.socket, data: bytes, trickle: float, chunk: int) -> None:
        if trickle <= 0:
            for start in range(0, len(data), chunk):
                if self._stopping.is_set():
                    return
                connection.sendall(data[start : start + chunk])
                self.bytes_sent += len(data[start : start + chunk])
            return
        for index in range(len(data)):
            connection.sendall(data[index : index + 1])
            self.bytes_sent += 1
            if self._stopping.wait(trickle):
                return


def gzip_stream(chunks: Iterator[bytes], wbits: int = 31) -> bytes:
    """``chunks`` compressed as one stream (gzip by default; ``wbits=-15``: raw deflate),
    one chunk at a time, so 1 GiB of zeros never sits in memory."""
    squeeze = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return b"".join(squeeze.compress(chunk) for chunk in chunks) + squeeze.flush()


async def peak_growth(call: Callable[[], Awaitable[object]]) -> tuple[int, BaseException | None]:
    """Run ``call``; the peak RSS growth (bytes) while it ran, and the
    :class:`~keyless_m2m.KeylessM2MError` it raised (``None``: it returned). A thread samples
    every 2 ms: an after-the-fact reading would miss memory the allocator has returned."""
    import psutil  # a test dependency; imported here so the server alone does not need it

    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    raised: BaseException | None = None
    try:
        with anyio.fail_after(60):
            await call()
    except KeylessM2MError as exc:
        raised = exc
    finally:
        done.set()
        sampler.join(timeout=5)
    peak = max(peak, process.memory_info().rss)
    return peak - baseline, raised
