"""The sync facade (keyless_m2m/sync.py) and httpx's sync client through it."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ManagerClosedError,
    SyncTokenManager,
)
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import require_module
from tests.manager_rig import Api

pytestmark = pytest.mark.anyio


def test_sync_httpx_client_through_sync_manager(server: AuthorizationServer) -> None:
    server.register_client("basic", client_secret="s3cr3t-value")
    api = Api(reject=1)
    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value")) as tokens:
        with httpx.Client(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            assert http.get("https://api.example/").status_code == 200
        assert len(api.calls) == 2 and api.calls[0] != api.calls[1]
        assert server.token_requests == 2


def test_httpx2_fork_when_installed(server: AuthorizationServer) -> None:
    httpx2 = require_module("httpx2")
    server.register_client("basic", client_secret="s3cr3t-value")
    calls: list[str] = []

    def api(request: Any) -> Any:
        calls.append(request.headers.get("authorization", ""))
        if len(calls) == 1:
            return httpx2.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx2.Response(200)

    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value")) as tokens:
        with httpx2.Client(auth=tokens.auth(library="httpx2"), transport=httpx2.MockTransport(api)) as http:
            assert http.get("https://api.example/").status_code == 200
    assert len(calls) == 2 and calls[0] != calls[1] and all(c.startswith("Bearer at_") for c in calls)
    assert server.token_requests == 2


# 9. SyncTokenManager -------------------------------------------------------------------


def test_sync_manager_64_threads_one_request_and_no_thread_leak(server: AuthorizationServer) -> None:
    server.register_client("basic", client_secret="s3cr3t-value")
    server.latency = 0.2
    before = threading.active_count()
    tokens = SyncTokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value"))
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(64)

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(tokens.get_token().value)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and len(results) == 64 and len(set(results)) == 1
    assert server.token_requests == 1
    tokens.close()
    tokens.close()  # idempotent
    with pytest.raises(ManagerClosedError):
        tokens.get_token()
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.02)
    assert threading.active_count() <= before


# 10. lifecycle -------------------------------------------------------------------------
