"""What the token endpoint and discovery share about HTTP: a response body read with a cap
on its *decoded* size, and the kind of a transport failure.

The body is read raw (``aiter_raw``) and decoded here, ``max_length`` bytes at a time, so a
compression bomb costs at most the cap plus one network chunk, never its inflated size
(httpx decodes a whole chunk at once: one 64 KiB chunk of a gzip bomb is 64 MiB). Only
codings whose output can be bounded are offered and accepted: ``gzip`` and ``deflate``,
one layer.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Final

import httpx

__all__ = ["ACCEPT_ENCODING", "BodyError", "read_body", "transport_failure"]

ACCEPT_ENCODING: Final = "gzip, deflate"
_GZIP = 16 + zlib.MAX_WBITS
_RESETS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)


class BodyError(Exception):
    """The body is over the cap, in a coding we do not accept, or corrupt (the message
    says which; it holds no byte of the body)."""


class _Inflater:
    """One layer of ``gzip`` or ``deflate``, decoded at most ``limit`` bytes at a time."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.started = False
        self._raw_deflate = False
        self._inflate = zlib.decompressobj(_GZIP if coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes, limit: int) -> Iterator[bytes]:
        """Decoded pieces of ``data``; stops (drops the rest) once ``limit`` bytes came out."""
        pending = data
        while pending and limit > 0:  # never 0: decompress(data, 0) means "no limit"
            if self._inflate.eof:
                if self.coding != "gzip":
                    raise BodyError("data after the end of the deflate body")
                self._inflate = zlib.decompressobj(_GZIP)  # another member (RFC 1952 allows several)
            try:
                piece = self._inflate.decompress(pending, limit)
            except zlib.error:
                if self.coding == "deflate" and not self.started and not self._raw_deflate:
                    # "deflate" is zlib-wrapped by the RFC, raw by some servers (httpx takes both)
                    self._raw_deflate = True
                    self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise BodyError(f"the {self.coding} body is corrupt") from None
            self.started = True
            limit -= len(piece)
            pending = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            if piece:
                yield piece

    def finish(self) -> None:
        if self.started and not self._inflate.eof:
            raise BodyError(f"the {self.coding} body is truncated")


def _codings(response: httpx.Response) -> list[str]:
    values = response.headers.get_list("content-encoding", split_commas=True)
    codings = [v.strip().lower() for v in values if v.strip() and v.strip().lower() != "identity"]
    if len(codings) > 1:
        raise BodyError(f"nested content-encoding {', '.join(codings)!r} is refused (one layer at most)")
    if codings and codings[0] == "x-gzip":
        return ["gzip"]
    if codings and codings[0] not in ("gzip", "deflate"):
        shown = "".join(ch if ch.isprintable() else "?" for ch in codings[0][:40])
        raise BodyError(f"content-encoding {shown!r} is refused (accepted: identity, gzip, deflate)")
    return codings


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, decoded; :class:`BodyError` past ``limit``
    decoded (or raw) bytes, for a refused coding, or for a corrupt body."""
    codings = _codings(response)
    inflater = _Inflater(codings[0]) if codings else None
    chunks: list[bytes] = []
    size = raw_size = 0
    if response.is_stream_consumed:
        # Built in memory (a test's MockTransport answer): httpx has decoded it already.
        body = response.content
        if len(body) > limit:
            raise BodyError(f"exceeds {limit} bytes once decoded")
        return body
    raw = response.aiter_raw()
    refused: BodyError | None = None
    async for data in raw:
        raw_size += len(data)
        try:
            if raw_size > limit:
                raise BodyError(f"exceeds {limit} bytes")
            pieces = [data] if inflater is None else inflater.feed(data, limit + 1 - size)
            for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise BodyError(f"exceeds {limit} bytes once decoded")
                chunks.append(piece)
        except BodyError as exc:
            refused = exc
            break
    if refused is not None:
        await _abandon(response, raw)
        raise refused
    if inflater is not None:
        inflater.finish()
    return b"".join(chunks)


async def _abandon(response: httpx.Response, raw: AsyncIterator[bytes]) -> None:
    """Stop reading ``response`` half-way. Closing the response first makes httpx's nested
    stream generators end (at once, with an error or without) when resumed; closing only
    the outer one would leave the inner ones for the garbage collector, which trio reports
    as a ResourceWarning."""
    await response.aclose()
    with contextlib.suppress(Exception):  # StopAsyncIteration, or the closed stream's error
        for _ in range(64):  # bounded: a closed stream has only what was buffered
            await raw.__anext__()


# -- the kind of a transport failure ------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the members of any exception group, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__context__, current.__cause__) if e is not None)


def _printable(text: str, limit: int = 120) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def transport_failure(exc: BaseException, host: str) -> tuple[str, str, bool]:
    """``(reason, what happened, retryable)`` for an exception from the HTTP exchange.

    Reasons: ``tls_verification`` (never retryable), ``tls``, ``dns``,
    ``connection_refused``, ``connection_reset``, ``timeout``, ``proxy``, ``protocol``,
    ``network``. The text names the cause (an OpenSSL reason, the host name), never a
    value from the request.
    """
    causes = list(_chain(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "unknown reason"
            return "tls_verification", f"certificate verify failed: {_printable(str(why))}", False
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "dns", f"the name {host!r} does not resolve", True
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection_refused", "connection refused", True
    for cause in causes:
        if isinstance(cause, _RESETS):
            return "connection_reset", "the connection was reset", True
        if isinstance(cause, OSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return "connection_reset", "the connection was reset", True
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or type(cause).__name__
            return "tls", f"TLS handshake failed: {_printable(str(reason))}", False
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "reading",
            httpx.WriteTimeout: "writing",
            httpx.PoolTimeout: "waiting for a pooled connection",
        }.get(type(exc), "waiting")
        return "timeout", f"timed out {phase}", True
    if isinstance(exc, httpx.ProxyError):
        return "proxy", "the proxy refused or failed the connection", True
    if isinstance(exc, httpx.RemoteProtocolError):
        return "protocol", "the server broke the HTTP protocol or closed the connection early", True
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError | httpx.ConnectError):
        return "network", f"network error ({type(exc).__name__})", True
    # Anything else (LocalProtocolError, UnsupportedProtocol, InvalidURL, a UnicodeError
    # from a header, ...) will fail the same way if tried again.
    return "protocol", f"the HTTP exchange failed ({type(exc).__name__})", False
