"""The manager's costs that grow with the number of callers and entries, counted (issue 21):
coroutine frames per parked waiter in a stampede, token requests and evictions with more
live scope sets than ``max_entries``. Asyncio and trio; counts, never times."""

from __future__ import annotations

import gc
import inspect
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import pytest

import keyless_m2m.manager
from keyless_m2m import AccessToken, ManagerClosedError, TokenManager
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint
from tests.manager_rig import until

pytestmark = pytest.mark.anyio
MANAGER_DIR = Path(keyless_m2m.manager.__file__).parent
WAITERS = 50


class GatedEndpoint(OfflineTokenEndpoint):
    """Answers once ``gate`` is set (made on the test's own event loop); ``started``
    counts requests begun, ``calls`` those answered."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: anyio.Event | None = None
        self.started = 0

    async def request(
        self,
        *,
        scope: str | None = None,
        resource: Sequence[str] = (),
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> AccessToken:
        assert self.gate is not None
        self.started += 1
        await self.gate.wait()
        return await super().request(
            scope=scope, resource=resource, audience=audience, extra_params=extra_params
        )


def manager_frames() -> Counter[str]:
    """Live coroutine objects of the manager's own code, by function."""
    return Counter(
        o.cr_code.co_qualname
        for o in gc.get_objects()
        if inspect.iscoroutine(o) and Path(o.cr_code.co_filename).parent == MANAGER_DIR
    )


async def park_waiters(tokens: TokenManager, endpoint: GatedEndpoint, got: list[AccessToken]) -> Counter[str]:
    """``WAITERS`` cold callers parked on one flight; the frames they hold, counted."""

    async def one() -> None:
        got.append(await tokens.get_token())

    async with anyio.create_task_group() as tg:
        for _ in range(WAITERS):
            tg.start_soon(one)
        await until(lambda: endpoint.started == 1)
        await until(lambda: tokens.stats.waits >= WAITERS - 1)
        frames = manager_frames()
        assert endpoint.gate is not None
        endpoint.gate.set()
    return frames


@pytest.mark.parametrize("background", [True, False], ids=["async-with", "bare"])
async def test_each_cold_waiter_holds_one_coroutine_frame_of_the_manager(background: bool) -> None:
    endpoint = GatedEndpoint()
    endpoint.gate = anyio.Event()
    tokens = TokenManager(endpoint=endpoint, scope="s")
    got: list[AccessToken] = []
    if background:
        async with tokens:
            frames = await park_waiters(tokens, endpoint, got)
    else:
        frames = await park_waiters(tokens, endpoint, got)
        await tokens.aclose()
    # Every caller is in get_token; only the one that started the flight went further.
    assert frames["TokenManager.get_token"] == WAITERS
    assert frames["TokenManager._slow_path"] == 1
    assert len(got) == WAITERS and len({t.value for t in got}) == 1
    assert endpoint.calls == 1


async def test_cold_waiters_parked_in_get_token_get_a_typed_error_on_aclose() -> None:
    endpoint = GatedEndpoint()
    endpoint.gate = anyio.Event()
    errors: list[BaseException] = []
    async with TokenManager(endpoint=endpoint, scope="s") as tokens:

        async def one() -> None:
            try:
                await tokens.get_token()
            except ManagerClosedError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await until(lambda: tokens.stats.waits >= 10)
            await tokens.aclose()
    assert len(errors) == 10 and len({id(e) for e in errors}) == 10  # one copy per waiter


async def test_a_waiter_in_get_token_takes_over_when_the_bare_leader_is_cancelled() -> None:
    endpoint = GatedEndpoint()
    endpoint.gate = anyio.Event()
    tokens = TokenManager(endpoint=endpoint, scope="s")
    got: list[AccessToken] = []

    async def leader(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await tokens.get_token()

    async def waiter() -> None:
        got.append(await tokens.get_token())

    async with anyio.create_task_group() as tg:
        leader_scope = await tg.start(leader)
        await until(lambda: endpoint.started == 1)
        for _ in range(5):
            tg.start_soon(waiter)
        await until(lambda: tokens.stats.waits >= 5)
        leader_scope.cancel()
        await until(lambda: endpoint.started == 2)  # one waiter took the flight over
        endpoint.gate.set()
    await tokens.aclose()
    assert len(got) == 5 and len({t.value for t in got}) == 1
    assert tokens.stats.handovers == 1 and endpoint.started == 2 and endpoint.calls == 1


# -- more live scope sets than max_entries ----------------------------------------------------


async def test_the_default_max_entries_holds_128_scope_sets_besides_the_default() -> None:
    endpoint = OfflineTokenEndpoint()
    async with TokenManager(endpoint=endpoint, scope="default") as tokens:
        assert tokens.max_entries == 128
        for _ in range(3):
            await tokens.get_token()
            for i in range(128):
                await tokens.get_token(f"s{i}")
        assert endpoint.calls == 129  # one per scope set, then all from the cache
        assert tokens.stats.evictions == 0


async def test_sustained_thrash_beyond_max_entries_is_counted_and_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="keyless_m2m")
    endpoint = OfflineTokenEndpoint()
    async with TokenManager(endpoint=endpoint, scope="default") as tokens:
        await tokens.get_token()
        live = tokens.max_entries + 1
        rounds = 3
        for _ in range(rounds):
            for i in range(live):
                await tokens.get_token(f"s{i}")
        # Cycling one more scope set than the table holds: every call is a token request,
        # and every call after the first 128 evicts a still-valid token, each one counted.
        assert endpoint.calls == 1 + rounds * live
        assert tokens.stats.evictions == rounds * live - tokens.max_entries
        assert await tokens.get_token() is not None and endpoint.calls == 1 + rounds * live
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "max_entries=128" in r.getMessage()
    ]
    assert len(warnings) == 1
