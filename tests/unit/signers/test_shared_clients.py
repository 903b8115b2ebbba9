"""The signers' shared SDK machinery (issue 21): SharedClients' reference counts, the
library's own thread limiter, and the AWS client key (counted, never timed)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest

from keyless_m2m.signers import _base
from keyless_m2m.signers._base import SharedClients

pytestmark = pytest.mark.anyio


class Made:
    def __init__(self) -> None:
        self.built: list[str] = []
        self.closed: list[object] = []

    def build(self, key: str) -> object:
        self.built.append(key)
        return object()


def test_one_build_per_key_and_the_last_release_closes() -> None:
    made = Made()
    clients: SharedClients[str, object] = SharedClients(made.build, made.closed.append)
    a1, a2 = clients.acquire("a"), clients.acquire("a")
    b = clients.acquire("b")
    assert a1 is a2 and a1 is not b
    assert made.built == ["a", "b"] and clients.built == 2
    assert clients.acquire_built("a") is a1 and clients.users("a") == 3
    clients.release("a", a1)
    clients.release("a", a1)
    assert made.closed == [] and clients.users("a") == 1
    clients.release("a", a1)
    assert made.closed == [a1] and clients.users("a") == 0
    clients.release("a", a1)  # a stray release of a forgotten client: nothing happens
    assert made.closed == [a1]
    assert clients.acquire_built("a") is None
    assert clients.acquire("a") is not a1 and made.built == ["a", "b", "a"]


def test_concurrent_acquires_build_once() -> None:
    made = Made()
    gate = threading.Barrier(8)
    clients: SharedClients[str, object] = SharedClients(made.build, made.closed.append)
    got: list[object] = []

    def acquire() -> None:
        gate.wait(10)
        got.append(clients.acquire("k"))

    threads = [threading.Thread(target=acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert made.built == ["k"] and len(got) == 8 and len({id(c) for c in got}) == 1
    assert clients.users("k") == 8


def test_a_failed_build_leaves_nothing_behind() -> None:
    def fail(key: str) -> object:
        raise RuntimeError("boom")

    clients: SharedClients[str, object] = SharedClients(fail, lambda c: None)
    with pytest.raises(RuntimeError):
        clients.acquire("k")
    assert clients.users("k") == 0 and clients.built == 0


async def test_sdk_calls_use_the_librarys_limiter_not_anyios_default() -> None:
    default = anyio.to_thread.current_default_thread_limiter()
    shared = _base.sdk_thread_limiter()
    seen: list[tuple[float, float]] = []

    def probe() -> None:
        seen.append((default.borrowed_tokens, shared.borrowed_tokens))

    own = anyio.CapacityLimiter(2)
    await _base.run_blocking(probe)
    await _base.run_blocking(probe, own)
    assert seen == [(0, 1), (0, 1)]
    assert _base.sdk_thread_limiter() is shared
    assert shared.total_tokens == _base.SDK_THREADS < default.total_tokens
    assert _base.sdk_build_limiter().total_tokens == 1


async def test_many_blocking_calls_hold_at_most_sdk_threads_threads() -> None:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}
    release = threading.Event()

    def call() -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        release.wait(10)
        with lock:
            state["now"] -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(3 * _base.SDK_THREADS):
            tg.start_soon(_base.run_blocking, call, anyio.CapacityLimiter(10))
        with anyio.fail_after(10):
            while state["now"] < _base.SDK_THREADS:
                await anyio.sleep(0.001)
        # Every SDK thread is busy; the application's own thread call is not behind them.
        assert await anyio.to_thread.run_sync(lambda: "user") == "user"
        release.set()
    assert state["max"] == _base.SDK_THREADS


def test_aws_client_key_holds_a_digest_of_the_credential_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    from keyless_m2m.signers import AwsKmsSigner

    secret = "canary-secret-71c4e09b5a3d4f2e8b6a1c9d7e5f3a2b"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    signer = AwsKmsSigner("alias/x", region="eu-west-1")
    key: Any = signer._shared_key()
    assert key == signer._shared_key()  # the same environment, the same key
    assert secret not in repr(key) and secret not in str(key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "x")
    assert signer._shared_key() != key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert AwsKmsSigner("alias/y", region="eu-west-1")._shared_key() == key  # other KMS key: shared
    assert AwsKmsSigner("alias/x", region="eu-west-2")._shared_key() != key
    assert (
        AwsKmsSigner("alias/x", region="eu-west-1", endpoint_url="http://127.0.0.1:4566")._shared_key() != key
    )
