"""A loopback gRPC server that checks the ``authorization`` metadata: generic handlers
with bytes in and out (no protoc step), a count of every call and of what it carried.

A call whose ``authorization`` is not ``Bearer <token>`` with a token ``accepts(token)``
approves (by default: one the embedded authorization server issued and the test did not
revoke) is aborted ``UNAUTHENTICATED``. The server listens with local credentials
(``grpc.local_server_credentials()``: loopback TCP), as call credentials need a secure
channel; ``insecure=True`` listens without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from types import TracebackType
from typing import Any, Self

import grpc

SERVICE = "keyless.test.Echo"
UNARY = f"/{SERVICE}/Unary"
UNARY_STREAM = f"/{SERVICE}/UnaryStream"
STREAM_UNARY = f"/{SERVICE}/StreamUnary"


class CheckingGrpcServer:
    def __init__(self, accepts: Callable[[str], bool], *, insecure: bool = False, workers: int = 16) -> None:
        self.accepts = accepts
        self.revoked: set[str] = set()
        self.seen: list[str | None] = []  # the authorization of every call, in order
        self.dpop: list[str | None] = []  # the dpop metadata of every call, in order
        self.refused = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(self._unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(self._stream_unary),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if insecure:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self._server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop(grace=None).wait(timeout=5)

    def _check(self, context: Any) -> None:
        metadata = dict(context.invocation_metadata())
        authorization = metadata.get("authorization")
        with self._lock:
            self.seen.append(authorization)
            self.dpop.append(metadata.get("dpop"))
        scheme, _, token = (authorization or "").partition(" ")
        if scheme not in ("Bearer", "DPoP") or token in self.revoked or not self.accepts(token):
            with self._lock:
                self.refused += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid_token")

    def _unary(self, request: bytes, context: Any) -> bytes:
        self._check(context)
        return b"echo:" + request

    def _unary_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        self._check(context)
        yield b"one:" + request
        yield b"two:" + request

    def _stream_unary(self, requests: Iterator[bytes], context: Any) -> bytes:
        self._check(context)
        return b"+".join(requests)
