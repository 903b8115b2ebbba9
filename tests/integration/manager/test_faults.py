"""Faults at a real loopback token endpoint, on asyncio and trio.

The scenarios live in :mod:`tests.fault_scenarios` (``python -m benchmarks.faults`` prints
them as the table in ``docs/reliability.md``); here each one runs and its counts are asserted:
what callers saw, how many requests the client made (bounded), and that service came back
by itself. Nothing here asserts a duration; waits the client chose (``sleeps``) are
asserted as values.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import fault_scenarios as faults
from tests.fault_scenarios import CALLERS, RIG_OPTIONS

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ATTEMPTS = RIG_OPTIONS["max_attempts"]


@pytest.fixture(autouse=True)
def _backend(anyio_backend: Any) -> None:
    """Every test here runs on asyncio and on trio."""


async def test_connection_refused_cold_then_recovers() -> None:
    o = await faults.connection_refused()
    # 100 callers, one flight of 4 attempts; the 50 that came during the manager's failure
    # backoff got the same typed error without a request of their own.
    assert o.errors == {"TransportError": 2 * CALLERS}
    assert o.failures == 1
    assert o.requests == ATTEMPTS + 1  # + the one that succeeded once the listener was back
    assert o.arrived == 1 and o.statuses == [200]
    assert o.recovery is not None


async def test_connection_refused_with_a_cached_token_is_invisible() -> None:
    o = await faults.connection_refused_warm()
    assert o.errors == {}
    assert o.served_stale > 0
    assert o.failures >= 3
    # each failed background refresh made exactly max_attempts attempts, no more
    assert o.extra["outage_requests"] == ATTEMPTS * o.extra["outage_failures"]
    assert o.failures == o.extra["outage_failures"]  # the refresh after the outage succeeded
    assert o.arrived == 2
    assert o.recovery is not None


async def test_reset_mid_body_is_retried() -> None:
    o = await faults.reset_mid_body()
    assert o.errors == {}
    assert o.requests == o.arrived == 3
    assert o.statuses == [0, 0, 200]
    assert o.flights == 1


@pytest.mark.parametrize("scenario", ["slow_headers", "slow_body"])
async def test_a_stalled_answer_times_out_and_is_retried(scenario: str) -> None:
    o = await faults.SCENARIOS[scenario]()
    assert o.errors == {}
    assert o.requests == o.arrived == 2
    assert o.flights == 1


async def test_503_storm_fails_callers_once_without_hammering_then_recovers() -> None:
    o = await faults.storm_503()
    assert o.errors == {"InvalidTokenResponseError": 2 * CALLERS}
    assert o.requests == o.arrived == ATTEMPTS + 1
    assert o.statuses == [503] * ATTEMPTS + [200]
    assert len(o.sleeps) == ATTEMPTS - 1  # backoff between attempts, none after the last
    assert o.recovery is not None


async def test_retry_after_is_honoured() -> None:
    o = await faults.storm_503_retry_after()
    assert o.errors == {}
    assert o.requests == o.arrived == 2
    assert len(o.sleeps) == 1 and o.sleeps[0] >= 1.0


async def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    o = await faults.storm_503_retry_after_long()
    assert o.errors == {"InvalidTokenResponseError": CALLERS}
    assert o.sleeps == []  # no 120 s wait, no retries inside the deadline
    assert o.requests == o.arrived == 2  # the refused one, then the recovery
    assert o.recovery is not None


async def test_flapping_server_is_absorbed_by_one_retry_per_fetch() -> None:
    o = await faults.flapping()
    assert o.errors == {}
    assert o.flights == 10
    assert o.requests == o.arrived == 20
    assert o.statuses == [500, 200] * 10


async def test_server_clock_10_minutes_off(anyio_backend: Any) -> None:
    # ahead on asyncio, behind on trio: both directions, one 2 s Retry-After wait each
    o = await (faults.clock_ahead() if anyio_backend[0] == "asyncio" else faults.clock_behind())
    assert o.errors == {}
    # one flight for 100 callers: the token stays fresh by the local monotonic clock
    assert o.flights == 1 and o.requests == o.arrived == 2
    # the HTTP-date Retry-After is read against the server's own Date: 1-2 s, not 0 or 600
    assert len(o.sleeps) == 1 and 1.0 <= o.sleeps[0] <= 2.0
    # expires_at is local wall-clock time + expires_in, whatever the server's Date says
    assert 290 <= o.extra["remaining"] <= 300
