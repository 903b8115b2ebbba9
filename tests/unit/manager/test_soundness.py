"""The token manager's contract as a user meets it (issue 14): exceptions leave ``async with``
as themselves, a caller's cancellation is honoured in every mode, closed means closed,
fork and foreign event loops fail fast with a typed error, eviction never breaks an entry,
and every bound of the in-memory shared cache holds. Asyncio and trio; counts, not times
(the ``fail_after`` bounds below are generous ceilings, not measurements)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyless_m2m import (
    AccessToken,
    ClientSecretBasic,
    ConfigurationError,
    InvalidClientError,
    KeylessM2MError,
    ManagerClosedError,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.testing import ManualClock
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint
from tests.manager_rig import until

pytestmark = pytest.mark.anyio
SECRET = "s3cr3t-value-for-soundness"


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=3600) as srv:
        srv.register_client("svc", client_secret=SECRET)
        yield srv


def manager(server: AuthorizationServer, **options: Any) -> TokenManager:
    options.setdefault("max_attempts", 1)
    return TokenManager(
        server.token_endpoint, ClientSecretBasic("svc", SECRET), scope="pockets.read", **options
    )


# 1. exceptions leave ``async with`` as themselves ---------------------------------------


async def test_a_library_error_leaves_async_with_as_itself(server: AuthorizationServer) -> None:
    server.fail_next(Fault(status=401, body={"error": "invalid_client"}))
    with pytest.raises(InvalidClientError):
        async with manager(server) as tokens:
            await tokens.get_token()


async def test_the_callers_own_error_leaves_async_with_as_itself(server: AuthorizationServer) -> None:
    with pytest.raises(KeyError):  # noqa: PT012 - the block is what must not wrap the error
        async with manager(server) as tokens:
            await tokens.get_token()
            raise KeyError("the caller's own")


async def test_an_error_while_a_background_flight_runs_leaves_as_itself(server: AuthorizationServer) -> None:
    server.latency = 0.5
    tokens = manager(server)
    with pytest.raises(ValueError, match="mine"):  # noqa: PT012 - as above
        async with tokens:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tokens.get_token)  # a flight is in progress when the body fails
                await until(lambda: server.token_requests == 1)
                tg.cancel_scope.cancel()
            raise ValueError("mine")
    assert tokens.closed


async def test_cancelling_the_body_exits_cleanly(server: AuthorizationServer) -> None:
    server.latency = 2
    with anyio.fail_after(5):
        with anyio.move_on_after(0.2) as outer:
            async with manager(server) as tokens:
                await tokens.get_token()
    assert outer.cancelled_caught


# 7. a caller's cancellation is honoured in every mode -----------------------------------


@pytest.mark.parametrize("in_context", [False, True], ids=["bare", "async-with"])
async def test_a_cancelled_caller_is_released_at_once_and_others_still_get_the_token(
    server: AuthorizationServer, in_context: bool
) -> None:
    server.latency = 1.5
    tokens = manager(server)
    async with contextlib.AsyncExitStack() as stack:
        if in_context:
            await stack.enter_async_context(tokens)
        else:
            stack.push_async_callback(tokens.aclose)
        got: list[AccessToken] = []

        async def waiter() -> None:
            got.append(await tokens.get_token())

        async with anyio.create_task_group() as tg:
            with anyio.fail_after(1.0):  # the server takes 1.5 s: only a release gets us out
                with anyio.move_on_after(0.1) as leader:
                    await tokens.get_token()
                tg.start_soon(waiter)
                tg.start_soon(waiter)
            assert leader.cancelled_caught
        assert len(got) == 2 and got[0] is got[1]
    # In bare mode the cancelled leader's flight is abandoned and a waiter starts another
    # (whether the abandoned request reached the server first depends on the machine's load).
    assert tokens.stats.refreshes == (1 if in_context else 2)
    assert tokens.stats.handovers == (0 if in_context else 1)
    assert server.token_requests == 1 if in_context else server.token_requests in (1, 2)


async def test_bare_mode_cancelled_leader_hands_the_flight_to_a_waiter(server: AuthorizationServer) -> None:
    server.latency = 0.5
    tokens = manager(server)
    try:
        got: list[AccessToken] = []
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await tokens.get_token()

        async def waiter() -> None:
            got.append(await tokens.get_token())

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(leader)
                await until(lambda: server.token_requests == 1)  # the leader's request is out
                for _ in range(20):
                    tg.start_soon(waiter)
                await until(lambda: tokens.stats.waits == 20)
                leader_scope.cancel()
        assert len(got) == 20 and len({t.value for t in got}) == 1
        assert server.token_requests in (1, 2)  # did the abandoned one arrive? load decides
        assert tokens.stats.handovers == 1
    finally:
        await tokens.aclose()


# 8. closed means closed ------------------------------------------------------------------


@pytest.mark.parametrize("in_context", [False, True], ids=["bare", "async-with"])
async def test_a_flight_that_ends_after_aclose_is_not_served(
    server: AuthorizationServer, in_context: bool
) -> None:
    server.latency = 0.5
    tokens = manager(server)
    outcomes: list[BaseException | AccessToken] = []

    async def caller() -> None:
        try:
            outcomes.append(await tokens.get_token())
        except KeylessM2MError as exc:
            outcomes.append(exc)

    async with contextlib.AsyncExitStack() as stack:
        if in_context:
            await stack.enter_async_context(tokens)
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await until(lambda: server.token_requests == 1)
            await tokens.aclose()
    await until(lambda: len(server.statuses) == 1)  # the server has answered: nobody listened
    await anyio.wait_all_tasks_blocked()
    assert len(outcomes) == 1 and isinstance(outcomes[0], ManagerClosedError)
    with pytest.raises(ManagerClosedError):
        await tokens.get_token()
    assert tokens.endpoint._http is None  # no HTTP client left open or created after close


async def test_no_http_client_is_created_after_aclose(server: AuthorizationServer) -> None:
    tokens = manager(server)
    await tokens.aclose()
    for _ in range(3):
        with pytest.raises(ManagerClosedError):
            await tokens.get_token(scope="other")
    assert tokens.endpoint._http is None and server.token_requests == 0


# 9. fork and foreign loops ---------------------------------------------------------------


def _in_child(body: Any, timeout: float = 10.0) -> int:
    """Run ``body()`` in a forked child; its return value is the exit status. The parent
    waits at most ``timeout`` seconds, then kills the child (a hang is the failure)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 99
        try:
            status = body()
        finally:
            os._exit(status)
    deadline = threading.Event()
    for _ in range(int(timeout / 0.05)):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        deadline.wait(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads: what users do
def test_sync_manager_after_fork_fails_fast_with_a_typed_error(server: AuthorizationServer) -> None:
    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("svc", SECRET)) as tokens:
        assert tokens.get_token().value

        def child() -> int:
            try:
                tokens.get_token(scope="fresh")
            except ManagerClosedError as exc:
                return 3 if "fork" in str(exc) else 4
            return 5

        assert _in_child(child) == 3
        assert tokens.get_token().value  # the parent is unaffected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_async_manager_after_fork_fails_fast_with_a_typed_error(server: AuthorizationServer) -> None:
    tokens = manager(server)
    with start_blocking_portal() as portal:  # the parent's loop lives on in its own thread
        portal.call(tokens.get_token)

        def child() -> int:
            try:
                anyio.run(tokens.get_token)
            except ManagerClosedError as exc:
                return 3 if "fork" in str(exc) else 4
            return 5

        assert _in_child(child) == 3
        assert portal.call(tokens.get_token).value  # the parent is unaffected
        portal.call(tokens.aclose)


def test_a_second_event_loop_fails_fast_instead_of_hanging(server: AuthorizationServer) -> None:
    server.latency = 1.0
    tokens = manager(server)
    started = threading.Event()
    first: list[Any] = []

    def loop_a() -> None:
        async def run() -> None:
            started.set()
            try:
                first.append(await tokens.get_token())
            finally:
                await tokens.aclose()

        anyio.run(run)

    thread = threading.Thread(target=loop_a)
    thread.start()
    try:
        assert started.wait(5)
        threading.Event().wait(0.2)  # loop A's flight is in progress

        async def from_loop_b() -> None:
            with anyio.fail_after(3):
                await tokens.get_token()

        for backend in ("asyncio", "trio"):
            with pytest.raises(ConfigurationError, match="event loop"):
                anyio.run(from_loop_b, backend=backend)
    finally:
        thread.join(10)
    assert first and first[0].value


# 10. eviction never breaks an entry ------------------------------------------------------


async def test_max_entries_one_serves_every_scope() -> None:
    endpoint = OfflineTokenEndpoint()
    async with TokenManager(endpoint=endpoint, scope="default", max_entries=1) as tokens:
        for _ in range(3):
            assert (await tokens.get_token("reports.read")).scope == "reports.read"
            assert (await tokens.get_token("other")).scope == "other"
            assert (await tokens.get_token()).scope == "default"


async def test_many_concurrent_cold_audiences_with_the_default_bound() -> None:
    endpoint = OfflineTokenEndpoint(delay=0.05)
    async with TokenManager(endpoint=endpoint, scope="s") as tokens:
        for _ in range(2):
            got: dict[int, AccessToken] = {}

            async def one(i: int, got: dict[int, AccessToken] = got) -> None:
                got[i] = await tokens.get_token(audience=f"urn:api:{i}")

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
            assert all(got[i].raw["audience"] == f"urn:api:{i}" for i in range(200))
        assert len(tokens._entries) <= tokens.max_entries


async def test_evicting_a_fresh_token_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = OfflineTokenEndpoint()
    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    async with TokenManager(endpoint=endpoint, max_entries=2) as tokens:
        default = await tokens.get_token()
        for i in range(5):
            await tokens.get_token(f"s{i}")
        assert tokens.stats.evictions == 3
        assert await tokens.get_token() is default  # the default entry does not count
    assert len([r for r in caplog.records if "max_entries" in r.getMessage()]) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_entries=st.integers(min_value=1, max_value=6),
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "a b", "c", None, "b a"]), st.sampled_from([None, "x", "y"])
            ),
            min_size=1,
            max_size=12,
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_property_any_concurrent_scope_sets_with_any_bound(
    max_entries: int, batches: list[list[tuple[str | None, str | None]]], anyio_backend: Any
) -> None:
    """Any sequence of concurrent batches of (scope, audience) gets, for each call, a token
    for exactly what was asked, and the table stays within its bound."""

    async def run() -> None:
        endpoint = OfflineTokenEndpoint(delay=0.001)
        async with TokenManager(endpoint=endpoint, scope="d", max_entries=max_entries) as tokens:
            for batch in batches:
                async with anyio.create_task_group() as tg:
                    for scope, audience in batch:
                        tg.start_soon(check, tokens, scope, audience)
                assert len(tokens._entries) <= max_entries

    async def check(tokens: TokenManager, scope: str | None, audience: str | None) -> None:
        token = await tokens.get_token(scope, audience=audience)
        expected = " ".join(sorted((scope if scope is not None else "d").split()))
        assert token.scope == expected and token.raw["audience"] == audience

    backend, options = anyio_backend
    anyio.run(run, backend=backend, backend_options=options)


# 12-13. the in-memory shared cache is bounded; a lease that never ends costs little ------


async def test_memory_cache_state_is_bounded() -> None:
    cache = MemoryTokenCache(max_entries=10)
    token = await OfflineTokenEndpoint().request()
    for i in range(20_000):
        key = f"k{i}"
        fence = await cache.acquire(key, ttl=5)
        assert fence is not None
        await cache.put(key, token, fence=fence, ttl=60)
        await cache.release(key, fence)
    state = [
        v
        for v in (getattr(cache, n) for n in dir(cache) if n.startswith("_") and not n.startswith("__"))
        if isinstance(v, dict)
    ]
    assert state and all(len(d) <= 10 for d in state)


async def test_memory_cache_fences_still_increase_per_key() -> None:
    cache = MemoryTokenCache(max_entries=2)
    token = await OfflineTokenEndpoint().request()
    first = await cache.acquire("k", ttl=5)
    assert first is not None and await cache.acquire("k", ttl=5) is None
    await cache.release("k", first)
    for i in range(50):  # churn through other keys: the state for "k" is forgotten
        f = await cache.acquire(f"o{i}", ttl=5)
        assert f is not None
        await cache.put(f"o{i}", token, fence=f, ttl=60)
        await cache.release(f"o{i}", f)
    second = await cache.acquire("k", ttl=5)
    assert second is not None and second > first
    # A writer holding the stale fence cannot overwrite what the newer one stored.
    assert await cache.put("k", token, fence=second, ttl=60)
    assert not await cache.put("k", token, fence=first, ttl=60)


async def test_memory_cache_abandoned_waits_leave_nothing_behind() -> None:
    cache = MemoryTokenCache(max_entries=4)
    for i in range(200):
        await cache.acquire(f"k{i}", ttl=0.01)
        await cache.wait(f"k{i}", max_wait=0.0)
    assert len(cache._changed) <= 4 and len(cache._leases) <= 4


async def test_a_lease_that_never_ends_is_bounded_by_the_deadline(server: AuthorizationServer) -> None:
    cache = MemoryTokenCache()
    tokens = manager(server, cache=cache, deadline=1.0)
    async with tokens:
        key = tokens._shared_key(tokens._default_entry)
        assert await cache.acquire(key, ttl=10_000) is not None  # a crashed writer's lease
        with anyio.fail_after(3):  # cache_wait is 20 s by default
            assert (await tokens.get_token()).value
    assert server.token_requests == 1


@pytest.mark.parametrize(
    "options",
    [
        {"resource": 123},
        {"max_entries": "5"},
        {"max_entries": True},
        {"refresh_window": "x"},
        {"expiry_leeway": float("nan")},
        {"cache_lock_ttl": None},
        {"cache_wait": "1"},
        {"failure_backoff": None},
        {"extra_params": ["a", "b"]},
    ],
    ids=lambda o: next(iter(o)),
)
def test_constructor_arguments_of_the_wrong_type_are_configuration_errors(options: dict[str, Any]) -> None:
    name = next(iter(options))
    with pytest.raises(ConfigurationError, match=rf"\b{name}\b"):  # the message names the option
        TokenManager(endpoint=OfflineTokenEndpoint(), **options)


async def test_get_token_arguments_of_the_wrong_type_are_configuration_errors() -> None:
    async with TokenManager(endpoint=OfflineTokenEndpoint()) as tokens:
        cases: list[dict[str, Any]] = [{"resource": 123}, {"audience": 5}, {"scope": 7}]
        for bad in cases:
            with pytest.raises(ConfigurationError, match=f"^{next(iter(bad))} must be "):
                await tokens.get_token(**bad)


# Issue 15, point 10: a resource server that rejects every token ---------------------------


async def test_an_api_rejecting_every_token_causes_no_refresh_storm(
    server: AuthorizationServer, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    calls = 0

    def api(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    async with manager(server) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            for _ in range(100):
                assert (await http.get("https://api.example/v2/pockets/")).status_code == 401
        # One token, one refresh after the first 401; then the floor holds.
        assert server.token_requests == 2
        assert tokens.stats.ignored_invalidations == 99 and calls == 200
    assert len([r for r in caplog.records if "min_invalidation_interval" in r.getMessage()]) == 1


async def test_invalidation_is_honoured_again_after_the_floor(manual_clock: ManualClock) -> None:
    endpoint = OfflineTokenEndpoint()
    async with TokenManager(endpoint=endpoint, min_invalidation_interval=10) as tokens:
        first = await tokens.get_token()
        assert await tokens.invalidate(first)
        second = await tokens.get_token()
        assert not await tokens.invalidate(second)  # within the floor: refused
        assert await tokens.get_token() is second
        manual_clock.advance(10)  # past the floor
        assert await tokens.invalidate(second)
        assert (await tokens.get_token()).value != second.value
        assert endpoint.calls == 3 and tokens.stats.ignored_invalidations == 1


def test_from_issuer_keeps_exactly_the_constructors_own_options() -> None:
    """from_issuer() splits options by a fixed list instead of inspecting the signature:
    the list must be the constructor's keyword-only options, no more, no fewer."""
    import inspect

    from keyless_m2m.manager import MANAGER_OPTIONS

    parameters = inspect.signature(TokenManager.__init__).parameters
    own = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"endpoint"}
    assert own == MANAGER_OPTIONS


def test_the_managers_are_token_sources_and_the_flow_needs_nothing_else() -> None:
    from keyless_m2m.bearer import BearerFlow
    from keyless_m2m.source import TokenSource

    assert isinstance(TokenManager(endpoint=OfflineTokenEndpoint()), TokenSource)

    class Fixed:  # a source of the user's own: two methods, no manager
        async def get_token(self, scope: Any = None, *, resource: Any = None, audience: Any = None) -> Any:
            raise AssertionError("not called")

        async def invalidate(self, token: Any) -> bool:
            return False

    flow = BearerFlow(Fixed())
    assert flow._async is not None and flow._sync is None
