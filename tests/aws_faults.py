"""kms:Sign answered as AWS would where moto cannot: moto checks neither IAM nor the key
state on Sign, so the tests inject AWS's error answers at botocore's ``before-send``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **kwargs: Any) -> Iterator[bytes]:
        yield self.body


class KmsSignFaults:
    """``install(client)``, then set ``fault = (status, "ErrorCode")`` (``None``: moto
    answers). ``calls`` counts the Sign requests botocore sent."""

    def __init__(self) -> None:
        self.fault: tuple[int, str] | None = None
        self.calls = 0

    def install(self, client: Any) -> None:
        client.meta.events.register("before-send.kms.Sign", self._before_send)

    def _before_send(self, request: Any, **kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.calls += 1
        if self.fault is None:
            return None
        status, code = self.fault
        body = json.dumps({"__type": code, "message": "injected by the test"}).encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/x-amz-json-1.1"}, _Body(body))
