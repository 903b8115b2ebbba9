"""The telemetry hook interface (keyless_m2m._telemetry) without OpenTelemetry: which hook
runs when, and that the cache-hit path runs none."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

from keyless_m2m import KeylessM2MError, TokenManager, _telemetry
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint
from keyless_m2m.testing.signers import InMemorySigner

pytestmark = pytest.mark.anyio


class Recorder:
    """Hooks that write down every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def token_fetch(self, info: _telemetry.FetchInfo) -> Recorder:
        self.calls.append(("fetch", info))
        return self

    def __enter__(self) -> Recorder:
        self.calls.append(("enter",))
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.calls.append(("exit", t))

    def succeeded(self, *, attempts: int, from_shared_cache: bool) -> None:
        self.calls.append(("succeeded", attempts, from_shared_cache))

    def failed(self, error: KeylessM2MError, *, attempts: int, cause: str | None) -> None:
        self.calls.append(("failed", type(error).__name__, cause))

    def cancelled(self, *, attempts: int) -> None:
        self.calls.append(("cancelled",))

    def retry(self, attempt: int, error: KeylessM2MError, delay: float) -> None:
        self.calls.append(("retry", attempt))

    def shared_wait(self, seconds: float) -> None:
        self.calls.append(("shared_wait",))

    async def sign(self, signer: Any, signing_input: bytes, purpose: str) -> bytes:
        self.calls.append(("sign", purpose))
        signature: bytes = await signer.sign(signing_input)
        return signature


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    hooks = Recorder()
    _telemetry.install(hooks)
    try:
        yield hooks
    finally:
        _telemetry.uninstall(hooks)


async def test_a_fetch_is_observed_once_and_a_cache_hit_not_at_all(recorder: Recorder) -> None:
    endpoint = OfflineTokenEndpoint()
    tokens = TokenManager(endpoint=endpoint, scope="b a")
    await tokens.get_token()
    for _ in range(100):
        await tokens.get_token()
    await tokens.aclose()
    assert endpoint.calls == 1
    assert [c[0] for c in recorder.calls] == ["fetch", "enter", "succeeded", "exit"]
    info = recorder.calls[0][1]
    assert info == _telemetry.FetchInfo(
        url="https://auth.example/token",
        auth_method="client_secret_basic",
        scope="a b",
        background=False,
        refresh_lag=None,
        shared_cache=False,
    )
    assert recorder.calls[2] == ("succeeded", 0, False)  # the offline endpoint sends no HTTP


async def test_a_foreign_exception_reaches_the_hooks_as_its_type_name(recorder: Recorder) -> None:
    class Broken(OfflineTokenEndpoint):
        async def request(self, **kwargs: Any) -> Any:
            raise RuntimeError("secret-ish text")

    tokens = TokenManager(endpoint=Broken())
    with pytest.raises(KeylessM2MError):
        await tokens.get_token()
    await tokens.aclose()
    assert ("failed", "SigningError", "RuntimeError") in recorder.calls


async def test_sign_goes_through_the_hooks_only_when_installed() -> None:
    signer = InMemorySigner()
    assert _telemetry.installed() is None
    assert await _telemetry.sign(signer, b"a.b", "client_assertion")
    hooks = Recorder()
    _telemetry.install(hooks)
    try:
        assert await _telemetry.sign(signer, b"a.b", "dpop_proof")
    finally:
        _telemetry.uninstall(hooks)
    assert hooks.calls == [("sign", "dpop_proof")]
    assert _telemetry.installed() is None


def test_uninstall_leaves_other_hooks_alone() -> None:
    mine, theirs = Recorder(), Recorder()
    _telemetry.install(theirs)
    try:
        _telemetry.uninstall(mine)
        assert _telemetry.installed() is theirs
    finally:
        _telemetry.uninstall()
    assert _telemetry.installed() is None
