"""What every vendor emulator shares: a loopback server's lifecycle and the one fault API.

:class:`LoopbackServer` fixes one convention for all of them: ``start()`` binds an ephemeral
port on ``127.0.0.1``, serves from threads of its own and returns the emulator itself;
``stop()`` undoes it (twice is harmless); ``with Emulator() as e:`` does both; ``.address``
is ``HOST:PORT`` and ``.url`` the same with the scheme. An emulator a test forgot to stop is
stopped when the interpreter exits, so no thread, socket or certificate file outlives the
test run. Faults come through :class:`~keyless_m2m.testing._faults.FaultInjection`.

:class:`LoopbackHTTPHandler` is the request handler the HTTP(S) emulators build on: it turns
Nagle's algorithm off and sends each answer (status line, headers, body) in one write, so a
kept-alive client never waits for a delayed ACK (~40 ms per request on Linux) before it
sees the body.
"""

from __future__ import annotations

import atexit
import importlib
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Self

from ...errors import MissingExtraError
from .._faults import FaultInjection, FaultQueue

__all__ = ["LoopbackHTTPHandler", "LoopbackServer", "import_extra"]

_running: weakref.WeakSet[LoopbackServer] = weakref.WeakSet()


@atexit.register
def _stop_forgotten_servers() -> None:
    for server in list(_running):
        try:
            server.stop()
        except Exception:  # noqa: S112 - best effort at interpreter exit; stop the others
            continue


def import_extra(module: str, extra: str) -> ModuleType:
    """Import a vendor SDK, or raise :class:`~keyless_m2m.errors.MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra, module) from None


class LoopbackServer(FaultInjection, ABC):
    """Base of the vendor emulators: lifecycle, addresses and faults (see the module docstring).

    A subclass implements :meth:`_serve` (bind, start serving, return the port) and
    :meth:`_shutdown` (stop serving, close connections, join threads, remove files), and
    names its fault classes in ``fault_types``.
    """

    #: The URL scheme of :attr:`url`.
    scheme: ClassVar[str] = "http"

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self._port = 0
        self._faults: FaultQueue[Any] = FaultQueue()

    # -- lifecycle ----------------------------------------------------------------------

    @abstractmethod
    def _serve(self) -> int:
        """Bind ``self.host`` on an ephemeral port, start serving, return the port."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Stop serving and release everything :meth:`_serve` took."""

    @property
    def running(self) -> bool:
        return self._port != 0

    def start(self) -> Self:
        """Serve on an ephemeral loopback port (no-op when running); returns the emulator."""
        if not self.running:
            self._port = self._serve()
            _running.add(self)
        return self

    def stop(self) -> None:
        """Stop serving and release the port, threads and files (no-op when stopped)."""
        if not self.running:
            return
        self._port = 0
        _running.discard(self)
        self._shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served on, ``0`` when stopped."""
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` while running (``RuntimeError`` otherwise)."""
        if not self.running:
            raise RuntimeError(f"the {type(self).__name__} is not running; call start()")
        return f"{self.host}:{self._port}"

    @property
    def url(self) -> str:
        """``SCHEME://HOST:PORT`` while running (``RuntimeError`` otherwise)."""
        return f"{self.scheme}://{self.address}"


class LoopbackHTTPHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: Nagle off, one write per answer, no access log."""

    protocol_version = "HTTP/1.1"
    # A kept-alive response sent in pieces with Nagle on waits for the client's delayed ACK
    # before its last piece goes out; with one write there is nothing to wait for, and with
    # TCP_NODELAY nothing waits even where a handler writes twice.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: tests read the emulators' records, not logs

    def respond(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Send status line, headers and ``body`` in one write (``Content-Length`` added)."""
        phrase = self.responses.get(status, ("",))[0]
        lines = [
            f"{self.protocol_version} {status} {phrase}",
            f"Server: {self.version_string()}",
            f"Date: {self.date_time_string()}",
            *(f"{name}: {value}" for name, value in headers.items()),
            f"Content-Length: {len(body)}",
        ]
        if any(name.lower() == "connection" and value.lower() == "close" for name, value in headers.items()):
            self.close_connection = True
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
