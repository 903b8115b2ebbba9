"""The token manager's ten behaviours (issue 3), on asyncio and trio, against a real
loopback authorization server and a counting signer. Counts, never wall-clock times."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from keyless_m2m import (
    AccessToken,
    ClientSecretBasic,
    ConfigurationError,
    InvalidTokenResponseError,
    KeylessM2MError,
    ManagerClosedError,
    PrivateKeyJWT,
    ServerError,
    SyncTokenManager,
    TokenManager,
    TransportError,
)
from keyless_m2m.errors import SigningError
from keyless_m2m.signers import KeyDescription, LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.helpers import exception_chain, make_key, pem_of, require_module

pytestmark = pytest.mark.anyio
FAST_RETRY = {"backoff": 0.01, "max_backoff": 0.02, "max_attempts": 2}


class CountingSigner:
    """A Signer that counts signatures and can take its time (like a KMS round trip)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = LocalSigner.from_pem(pem_of(make_key("p256")))
        self.delay = delay
        self.signatures = 0

    async def describe(self) -> KeyDescription:
        return await self.inner.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        self.signatures += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return await self.inner.sign(signing_input)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=3600) as srv:
        yield srv


@pytest.fixture
def signer(server: AuthorizationServer) -> CountingSigner:
    signer = CountingSigner()
    server.register_client("svc", public_jwk=dict(signer.inner._description.public_jwk))  # type: ignore[union-attr]
    return signer


def manager(server: AuthorizationServer, signer: CountingSigner, **options: Any) -> TokenManager:
    return TokenManager(server.token_endpoint, PrivateKeyJWT("svc", signer), scope="pockets.read", **options)


def run_without_suspending(coro: Any) -> Any:
    """Drive a coroutine one step: proves it finishes without yielding to the event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("get_token() suspended: the hot path must not yield")


async def gather_tokens(tokens: TokenManager, n: int, **kwargs: Any) -> list[AccessToken]:
    results: list[AccessToken] = []

    async def one() -> None:
        results.append(await tokens.get_token(**kwargs))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


# 1. stampede ---------------------------------------------------------------------------


async def test_stampede_cold_and_at_expiry_is_one_request_and_one_signature(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    server.expires_in = 1
    async with manager(server, signer, refresh_window=0, expiry_leeway=0) as tokens:
        first = await gather_tokens(tokens, 10_000)
        assert server.token_requests == 1 and signer.signatures == 1
        assert len({t.value for t in first}) == 1
        await anyio.sleep(1.05)  # the token has now expired; no background refresh was due
        second = await gather_tokens(tokens, 10_000)
        assert server.token_requests == 2 and signer.signatures == 2
        assert {t.value for t in second} != {t.value for t in first}
        assert len({t.value for t in second}) == 1
        assert tokens.stats.requests == 2 and tokens.stats.signatures == 2


# 2. hot path ---------------------------------------------------------------------------


async def test_hot_path_returns_without_yielding(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(server, signer) as tokens:
        token = await tokens.get_token()
        waits = tokens.stats.waits
        for _ in range(100):
            assert run_without_suspending(tokens.get_token()) is token
        assert tokens.stats.waits == waits


async def test_hot_path_for_an_explicit_scope(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(server, signer) as tokens:
        token = await tokens.get_token(scope="b a")
        assert run_without_suspending(tokens.get_token(scope="a b")) is token
        assert run_without_suspending(tokens.get_token(scope=["a", "b"])) is token


# 3. background refresh -----------------------------------------------------------------


async def test_background_refresh_never_makes_callers_wait(server: AuthorizationServer) -> None:
    signer = CountingSigner(delay=0.2)
    server.register_client("svc", public_jwk=dict(signer.inner._description.public_jwk))  # type: ignore[union-attr]
    server.expires_in = 4
    async with manager(server, signer, refresh_window=3.5, expiry_leeway=0) as tokens:
        old = await tokens.get_token()  # refresh window opens 0.5 s after issue
        cold_waits = tokens.stats.waits  # the cold fetch had to be waited for; no later call may
        server.latency = 0.5
        await anyio.sleep(0.6)
        seen_during_refresh = []
        # The first call in the window starts the background refresh and returns at once;
        # every call while it runs (it takes >= 0.7 s) returns the old token at once.
        for i in range(20):
            seen_during_refresh.append(run_without_suspending(tokens.get_token()))
            if i == 0:
                server.expires_in = 3600  # the next token lives long: no third refresh
            await anyio.sleep(0.02)
        assert all(t is old for t in seen_during_refresh)
        assert tokens.stats.refreshes == 2 and tokens.stats.waits == cold_waits
        with anyio.fail_after(10):
            while tokens.stats.requests < 2 or tokens._default_entry.flight is not None:
                await anyio.sleep(0.05)
        new = run_without_suspending(tokens.get_token())
        assert new is not old and new.value != old.value
        assert server.token_requests == 2 and signer.signatures == 2 and tokens.stats.waits == cold_waits


# 4. failure ----------------------------------------------------------------------------


async def test_failure_fails_waiters_once_then_backs_off_then_recovers(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    server.latency = 0.1
    server.fail_next(Fault(status=500, body={"error": "server_error"}, count=None))
    async with manager(server, signer, failure_backoff=0.5, max_failure_backoff=0.5, **FAST_RETRY) as tokens:
        outcomes: list[BaseException] = []

        async def caller() -> None:
            try:
                await tokens.get_token()
            except KeylessM2MError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(caller)
        assert len(outcomes) == 200 and all(isinstance(e, ServerError) for e in outcomes)
        assert server.token_requests == 2  # one flight, its two attempts; not 200
        assert tokens.stats.failures == 1
        for _ in range(50):  # inside the backoff window: the same error, no request
            with pytest.raises(ServerError):
                await tokens.get_token()
        assert server.token_requests == 2
        server.clear_faults()
        await anyio.sleep(0.55)
        assert (await tokens.get_token()).value  # recovered by itself
        assert server.token_requests == 3


async def test_valid_token_is_served_while_refresh_fails_then_connection_refused(
    signer: CountingSigner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    first = AuthorizationServer(expires_in=30).start()
    port = int(first.issuer.rsplit(":", 1)[1])
    first.register_client("svc", public_jwk=dict(signer.inner._description.public_jwk))  # type: ignore[union-attr]
    try:
        async with manager(
            first,
            signer,
            refresh_window=29.5,
            expiry_leeway=0,
            failure_backoff=0.2,
            max_failure_backoff=0.2,
            **FAST_RETRY,
        ) as tokens:
            valid = await tokens.get_token()
            first.fail_next(Fault(status=500, count=None))
            await anyio.sleep(0.6)  # inside the refresh window now
            for _ in range(30):
                assert await tokens.get_token() is valid
                await anyio.sleep(0.02)
            assert tokens.stats.failures >= 1
            assert any("serving the current token" in r.getMessage() for r in caplog.records)
            first.stop()  # now the endpoint refuses connections
            await anyio.sleep(0.3)
            for _ in range(30):
                assert await tokens.get_token() is valid
                await anyio.sleep(0.02)
            failures_while_down = tokens.stats.failures
            assert failures_while_down >= 2
            # every failed flight made at most max_attempts requests: backoff, not hammering
            assert tokens.stats.requests <= 1 + 2 * failures_while_down
            second = AuthorizationServer(port=port, expires_in=30).start()
            second.register_client("svc", public_jwk=dict(signer.inner._description.public_jwk))  # type: ignore[union-attr]
            try:
                with anyio.fail_after(10):
                    while (await tokens.get_token()) is valid:
                        await anyio.sleep(0.05)
                assert second.token_requests == 1
            finally:
                second.stop()
    finally:
        first.stop()


async def test_connection_refused_on_a_cold_cache_is_a_transport_error(signer: CountingSigner) -> None:
    dead = AuthorizationServer()
    url = dead.token_endpoint
    dead.stop()
    async with TokenManager(url, PrivateKeyJWT("svc", signer), **FAST_RETRY) as tokens:
        with pytest.raises(TransportError):
            await tokens.get_token()
        with pytest.raises(TransportError):  # backoff window: no new attempt
            await tokens.get_token()
        assert tokens.stats.requests == 2


# 5. cancellation -----------------------------------------------------------------------


@pytest.mark.parametrize("in_context", [True, False], ids=["task-group", "inline"])
async def test_cancelled_leader_and_waiters_do_not_strand_others(
    server: AuthorizationServer, signer: CountingSigner, in_context: bool
) -> None:
    server.latency = 0.3
    tokens = manager(server, signer)
    async with contextlib.AsyncExitStack() as stack:
        if in_context:
            await stack.enter_async_context(tokens)
        else:
            stack.push_async_callback(tokens.aclose)
        got: list[AccessToken] = []
        leader_scope = anyio.CancelScope()
        waiter_scopes = [anyio.CancelScope() for _ in range(5)]

        async def leader() -> None:
            with leader_scope:
                await tokens.get_token()

        async def waiter(scope: anyio.CancelScope | None) -> None:
            if scope is None:
                got.append(await tokens.get_token())
                return
            with scope:
                await tokens.get_token()

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.sleep(0.05)  # the flight is in progress now
            for s in waiter_scopes:
                tg.start_soon(waiter, s)
            for _ in range(10):
                tg.start_soon(waiter, None)
            await anyio.sleep(0.05)
            leader_scope.cancel()
            for s in waiter_scopes:
                s.cancel()
        assert len(got) == 10 and len({t.value for t in got}) == 1
        # Outside a context the cancelled leader is released at once (issue 14): its flight
        # is abandoned and a waiter fetches again, so one more request than inside one.
        # (Whether the abandoned request reached the server first depends on the load.)
        assert tokens.stats.refreshes == (1 if in_context else 2)
        if in_context:
            assert server.token_requests == 1 and signer.signatures == 1
        else:
            assert server.token_requests in (1, 2) and signer.signatures in (1, 2)


# 6. keys -------------------------------------------------------------------------------


async def test_cache_keys_normalise_and_separate(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(server, signer) as tokens:
        a = await tokens.get_token(scope="a b")
        assert await tokens.get_token(scope="b  a") is a
        assert await tokens.get_token(scope=("b", "a")) is a
        assert await tokens.get_token(scope=["a", "b"]) is a
        other = await tokens.get_token(scope="a")
        res1 = await tokens.get_token(scope="a b", resource="https://api.one")
        res2 = await tokens.get_token(scope="a b", resource=["https://api.two"])
        aud = await tokens.get_token(scope="a b", audience="urn:x")
        default = await tokens.get_token()
        assert len({id(t) for t in (a, other, res1, res2, aud, default)}) == 6
        assert server.token_requests == 6


async def test_cache_is_bounded_lru(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(server, signer, max_entries=3) as tokens:
        for i in range(10):
            await tokens.get_token(scope=f"s{i}")
        assert len(tokens._entries) <= 3
        default = await tokens.get_token()
        assert await tokens.get_token() is default  # the default entry is never evicted
        requests = server.token_requests
        await tokens.get_token(scope="s9")  # most recent: still cached
        assert server.token_requests == requests
        await tokens.get_token(scope="s0")  # evicted long ago: fetched again
        assert server.token_requests == requests + 1


def test_bad_options_are_configuration_errors(server: AuthorizationServer, signer: CountingSigner) -> None:
    with pytest.raises(ConfigurationError):
        manager(server, signer, max_entries=0)
    with pytest.raises(ConfigurationError):
        manager(server, signer, refresh_window=-1)
    with pytest.raises(ConfigurationError):
        TokenManager(server.token_endpoint)


# 7. invalidate -------------------------------------------------------------------------


async def test_concurrent_401s_cause_one_refresh(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(server, signer) as tokens:
        rejected = await tokens.get_token()
        dropped: list[bool] = []
        fresh: list[AccessToken] = []

        async def on_401() -> None:
            dropped.append(await tokens.invalidate(rejected))
            fresh.append(await tokens.get_token())

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(on_401)
        assert dropped.count(True) == 1
        assert server.token_requests == 2 and signer.signatures == 2
        assert len({t.value for t in fresh}) == 1 and fresh[0] != rejected
        assert await tokens.invalidate(rejected) is False  # already replaced: no-op
        assert (await tokens.get_token()) is fresh[0] and server.token_requests == 2


# 8. httpx ------------------------------------------------------------------------------


class Api:
    """An API that rejects the first ``reject`` distinct tokens with invalid_token."""

    def __init__(self, reject: int = 1) -> None:
        self.reject = reject
        self.rejected: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        self.calls.append(auth)
        if len(self.rejected) < self.reject or auth in self.rejected:
            self.rejected.add(auth)
            return httpx.Response(
                401, headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'}
            )
        return httpx.Response(200, json={"ok": True})


async def test_httpx_auth_sets_bearer_and_retries_once_after_invalid_token(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    api = Api(reject=1)
    async with manager(server, signer) as tokens:
        first = await tokens.get_token()
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            response = await http.post("https://api.example/v2/pockets/", json={"a": 1})
        assert response.status_code == 200
        assert api.calls == [f"Bearer {first.value}", f"Bearer {(await tokens.get_token()).value}"]
        assert api.calls[0] != api.calls[1] and server.token_requests == 2


async def test_httpx_auth_does_not_loop_and_does_not_replay_streams(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    api = Api(reject=10)
    async with manager(server, signer) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            response = await http.get("https://api.example/")
            assert response.status_code == 401 and len(api.calls) == 2  # one retry, not more

            async def body() -> Any:
                yield b"chunk"

            api.calls.clear()
            response = await http.post("https://api.example/", content=body())
            assert response.status_code == 401 and len(api.calls) == 1  # stream: not replayed


async def test_plain_401_without_invalid_token_is_returned(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api"'})

    async with manager(server, signer) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            assert (await http.get("https://api.example/")).status_code == 401
        assert server.token_requests == 1


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


async def test_outside_a_context_refreshes_inline_with_single_flight(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    server.latency = 0.1
    tokens = manager(server, signer)
    try:
        results = await gather_tokens(tokens, 500)
        assert server.token_requests == 1 and len({t.value for t in results}) == 1
    finally:
        await tokens.aclose()


async def test_close_is_idempotent_and_use_after_close_is_an_error(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    tokens = manager(server, signer)
    async with tokens:
        await tokens.get_token()
    await tokens.aclose()
    assert tokens.closed
    with pytest.raises(ManagerClosedError):
        await tokens.get_token()
    with pytest.raises(ManagerClosedError):
        await tokens.__aenter__()


async def test_close_wakes_waiters(server: AuthorizationServer, signer: CountingSigner) -> None:
    server.latency = 0.5
    errors: list[BaseException] = []
    tokens = manager(server, signer)
    async with tokens:

        async def waiter() -> None:
            try:
                await tokens.get_token()
            except ManagerClosedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(waiter)
            await anyio.sleep(0.1)
            await tokens.aclose()
    assert len(errors) == 5


async def test_invalid_response_is_never_cached(server: AuthorizationServer, signer: CountingSigner) -> None:
    async with manager(
        server, signer, failure_backoff=0.01, max_failure_backoff=0.01, max_attempts=1
    ) as tokens:
        good = await tokens.get_token(scope="a")
        await tokens.invalidate(good)
        server.fail_next(Fault(status=200, body={"access_token": "", "token_type": "Bearer"}))
        with pytest.raises(InvalidTokenResponseError):
            await tokens.get_token(scope="a")
        await anyio.sleep(0.02)
        after = await tokens.get_token(scope="a")
        assert after.value and after != good


class LeakySigner(CountingSigner):
    """A user's own signer whose exception text carries a secret."""

    async def sign(self, signing_input: bytes) -> bytes:
        raise RuntimeError("vault said no to token hvs.CANARY-secret-in-exception")


async def test_a_user_signers_exception_text_is_not_passed_on(
    server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    signer = LeakySigner()
    await signer.inner.describe()
    with caplog.at_level(logging.DEBUG):
        async with manager(server, signer) as tokens:
            with pytest.raises(SigningError, match="RuntimeError") as caught:
                await tokens.get_token()
    texts = [f"{e!s} {e!r}" for e in exception_chain(caught.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert texts and not any("CANARY" in t for t in texts)


def test_auth_of_the_wrong_kind_of_manager_is_a_clear_type_error(server: AuthorizationServer) -> None:
    server.register_client("basic", client_secret="s3cr3t-value")
    tokens = TokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value"))
    with httpx.Client(auth=tokens.auth(), transport=httpx.MockTransport(Api())) as http:
        with pytest.raises(TypeError, match="SyncTokenManager"):
            http.get("https://api.example/")
    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value")) as sync:
        flow = sync.auth().async_auth_flow(httpx.Request("GET", "https://api.example/"))
        with pytest.raises(TypeError, match=r"TokenManager\.auth"):
            anyio.run(flow.__anext__)
    assert server.token_requests == 0
