"""The scenarios: cold stampede, hot path, expiry under load, outage under load.

Each run gets its own loopback token endpoint (so counts never mix) answering every
token request after ``LATENCY`` seconds, and a ticker task that sleeps 1 ms in a loop
and records how late it wakes up: the worst event-loop stall the run caused.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter, perf_counter_ns
from typing import Any

import anyio

from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault

from .contenders import (
    CLIENT_ID,
    CLIENT_SECRET,
    Contender,
    KeylessM2M,
    Timed,
    best_ns_per_iter,
    es256_signer,
    time_empty,
    time_floor,
)
from .hotpath import step_ops

LATENCY = 0.05  # every token response takes 50 ms
THINK = (0.02, 0.08)  # each caller's "API call" between two get_token()s, uniform

Factory = Callable[[AuthorizationServer, float], Contender]


def loopback_server(expires_in: float, latency: float = LATENCY) -> AuthorizationServer:
    """An :class:`AuthorizationServer` (not started yet) with a production-like backlog."""
    server = AuthorizationServer(latency=latency, expires_in=expires_in)
    # socketserver listens with a backlog of 5: a burst of connections from a library
    # without single flight would wait for SYN retransmits (1 s, 3 s...), measuring the
    # test server rather than the library. Listen with a production-like backlog.
    server._httpd.socket.listen(1024)
    return server


@asynccontextmanager
async def token_server(expires_in: float) -> AsyncIterator[AuthorizationServer]:
    server = loopback_server(expires_in)
    description = await es256_signer().describe()
    server.register_client(CLIENT_ID, client_secret=CLIENT_SECRET, public_jwk=dict(description.public_jwk))
    with server:
        yield server


class Ticker:
    """Sleeps ``period`` in a loop; ``worst`` is the largest lateness seen, in seconds."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.worst = 0.0

    def reset(self) -> None:
        self.worst = 0.0

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        period = self.period
        task_status.started()
        while True:
            t = perf_counter()
            await anyio.sleep(period)
            late = perf_counter() - t - period
            if late > self.worst:
                self.worst = late


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- 1. cold stampede -------------------------------------------------------------------


@dataclass
class StampedeResult:
    name: str
    callers: int
    requests: int
    seconds: float  # from release until the last caller has its token (or its error)
    stall: float
    errors: int
    error_types: dict[str, int] = field(default_factory=dict)
    runs: int = 1


async def stampede(factory: Factory, callers: int) -> StampedeResult:
    """``callers`` tasks, parked on one event, call ``get()`` at once on a cold cache."""
    lifetime = 3600.0
    async with token_server(lifetime) as server, factory(server, lifetime) as contender:
        go = anyio.Event()
        parked = 0
        error_types: Counter[str] = Counter()
        finished: list[float] = []
        get = contender.get

        async def caller() -> None:
            nonlocal parked
            parked += 1
            await go.wait()
            try:
                await get()
            except Exception as exc:
                error_types[type(exc).__name__] += 1
            finished.append(perf_counter())

        ticker = Ticker()
        async with anyio.create_task_group() as outer:
            await outer.start(ticker.run)
            async with anyio.create_task_group() as tg:
                for _ in range(callers):
                    tg.start_soon(caller)
                while parked < callers:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.05)
                before_release = getattr(contender, "before_release", None)
                if before_release is not None:
                    before_release()  # e.g. gc.freeze() once the callers are parked
                ticker.reset()
                released = perf_counter()
                go.set()
            await anyio.sleep(0.01)  # let the ticker wake up and record the last stall
            stall = ticker.worst
            outer.cancel_scope.cancel()
        return StampedeResult(
            name=contender.name,
            callers=callers,
            requests=server.token_requests,
            seconds=max(finished) - released,
            stall=stall,
            errors=error_types.total(),
            error_types=dict(error_types),
        )


async def stampede_median(factory: Factory, callers: int, repeats: int) -> StampedeResult:
    """The median of ``repeats`` stampedes, metric by metric (one run when a run takes
    more than 3 s, as Authlib's 10,000 separate fetches do)."""
    runs = [await stampede(factory, callers)]
    if runs[0].seconds < 3:
        runs += [await stampede(factory, callers) for _ in range(repeats - 1)]
    error_types: Counter[str] = Counter()
    for r in runs:
        error_types.update(r.error_types)
    return StampedeResult(
        name=runs[0].name,
        callers=callers,
        requests=round(statistics.median(r.requests for r in runs)),
        seconds=statistics.median(r.seconds for r in runs),
        stall=statistics.median(r.stall for r in runs),
        errors=max(r.errors for r in runs),
        error_types=dict(error_types),  # summed over the runs
        runs=len(runs),
    )


# -- 2. hot path ------------------------------------------------------------------------


@dataclass
class HotPathResult:
    name: str
    token_ns: float  # the cached-token check one request makes
    flow_ns: float  # the whole httpx.Auth step of one request


async def hot_path(
    factories: Sequence[Factory], runs: int
) -> tuple[float, float, list[HotPathResult], list[tuple[str, float]]]:
    """ns per call with a fresh cached token, everything timed in turns in each run.

    Returns (floor, empty loop, per-library results, keyless-m2m's step-by-step rows)."""
    lifetime = 3600.0
    async with AsyncExitStack() as stack:
        contenders = []
        for factory in factories:
            server = await stack.enter_async_context(token_server(lifetime))
            contender = await stack.enter_async_context(factory(server, lifetime))
            await contender.get()
            contenders.append(contender)
        ops: dict[str, Timed] = {"floor": time_floor, "empty": time_empty}
        for contender in contenders:
            ops[contender.name + ":token"] = contender.hot_token
            ops[contender.name + ":flow"] = contender.hot_flow
        steps = step_ops()
        ops.update(steps)
        best = await best_ns_per_iter(ops, runs)
    results = [HotPathResult(c.name, best[c.name + ":token"], best[c.name + ":flow"]) for c in contenders]
    ours = results[0]
    step_rows = [("`await noop()` (the floor)", best["floor"])]
    step_rows += [(label, best[label]) for label, _ in steps if not label.startswith("auth step")]
    step_rows.append(("the real `TokenManager.get_token()`", ours.token_ns))
    step_rows += [(label, best[label]) for label, _ in steps if label.startswith("auth step")]
    step_rows.append(("the real `BearerAuth.async_auth_flow` step", ours.flow_ns))
    return best["floor"], best["empty"], results, step_rows


# -- 3 and 4. expiry and outage under load ----------------------------------------------


@dataclass
class LoadResult:
    name: str
    callers: int
    duration: float
    lifetime: float
    requests: int  # token requests during the run (after the warm-up token)
    calls: int
    errors: int
    stall: float
    latencies_ns: list[int] = field(repr=False)  # sorted, every get() call
    outage: tuple[float, float] | None = None  # (start, length) in seconds from the start
    outage_requests: int = 0
    outage_calls: int = 0
    outage_errors: int = 0
    errors_after: int = 0  # errors in calls started after the endpoint came back
    last_error_after: float = 0.0  # when the last failing call ended, after the outage (s)
    outage_max_ns: int = 0
    # seconds from the recovery until the last call started during the outage returned
    blocked_after: float = 0.0
    error_types: dict[str, int] = field(default_factory=dict)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ns, q)


async def under_load(
    factory: Factory,
    *,
    callers: int,
    duration: float,
    lifetime: float = 2.0,
    outage: tuple[float, float] | None = None,
) -> LoadResult:
    """``callers`` tasks loop ``get()`` + a simulated API call (``THINK``) for
    ``duration`` seconds over tokens living ``lifetime`` seconds; with ``outage=(start,
    length)`` the endpoint answers 503 to every token request in that window."""
    async with token_server(lifetime) as server, factory(server, lifetime) as contender:
        await contender.get()  # everyone starts with one token
        base_requests = server.token_requests
        starts: list[float] = []
        lats: list[int] = []
        oks: list[bool] = []
        error_types: Counter[str] = Counter()
        marks: dict[str, int] = {}
        get = contender.get
        begin = perf_counter()
        stop = begin + duration

        async def caller(seed: int) -> None:
            rng = random.Random(seed)  # the same think times for every library
            low, high = THINK
            await anyio.sleep(rng.uniform(0, high))
            while True:
                now = perf_counter()
                if now >= stop:
                    return
                t0 = perf_counter_ns()
                try:
                    await get()
                    ok = True
                except Exception as exc:
                    error_types[type(exc).__name__] += 1
                    ok = False
                lats.append(perf_counter_ns() - t0)
                starts.append(now - begin)
                oks.append(ok)
                await anyio.sleep(rng.uniform(low, high))

        def endpoint_down(start: float, length: float) -> None:
            # A thread, not a task: a library that blocks the event loop must not be able
            # to delay the end of the outage it is measured in.
            time.sleep(max(0.0, begin + start - perf_counter()))
            marks["before"] = server.token_requests
            server.fail_next(Fault(status=503, count=None))
            time.sleep(max(0.0, begin + start + length - perf_counter()))
            server.clear_faults()
            marks["after"] = server.token_requests

        ticker = Ticker()
        driver = None
        if outage is not None:
            driver = threading.Thread(target=endpoint_down, args=outage, name="outage", daemon=True)
            driver.start()
        async with anyio.create_task_group() as outer:
            await outer.start(ticker.run)
            async with anyio.create_task_group() as tg:
                for i in range(callers):
                    tg.start_soon(caller, i)
                await anyio.sleep(0.2)  # spawning 1,000 tasks is not the libraries' stall
                ticker.reset()
            await anyio.sleep(0.01)  # let the ticker wake up and record the last stall
            stall = ticker.worst
            outer.cancel_scope.cancel()

        result = LoadResult(
            name=contender.name,
            callers=callers,
            duration=duration,
            lifetime=lifetime,
            requests=server.token_requests - base_requests,
            calls=len(lats),
            errors=oks.count(False),
            stall=stall,
            latencies_ns=sorted(lats),
            outage=outage,
            error_types=dict(error_types),
        )
        if driver is not None:
            driver.join(timeout=30)
        if outage is not None:
            start, length = outage
            end = start + length
            result.outage_requests = marks["after"] - marks["before"]
            in_window = [i for i, s in enumerate(starts) if start <= s < end]
            result.outage_calls = len(in_window)
            result.outage_errors = sum(1 for i in in_window if not oks[i])
            result.outage_max_ns = max((lats[i] for i in in_window), default=0)
            result.errors_after = sum(1 for s, ok in zip(starts, oks, strict=True) if s >= end and not ok)
            failed_ends = [s + lat / 1e9 for s, lat, ok in zip(starts, lats, oks, strict=True) if not ok]
            result.last_error_after = max(0.0, max(failed_ends, default=end) - end)
            ends = [starts[i] + lats[i] / 1e9 for i in in_window]
            result.blocked_after = max(0.0, max(ends, default=end) - end)
        return result


# -- trio (ours only) -------------------------------------------------------------------


async def trio_section(runs: int, callers: Sequence[int]) -> dict[str, Any]:
    """keyless-m2m on trio: the hot path against trio's floor, and the stampede."""
    lifetime = 3600.0
    async with token_server(lifetime) as server, KeylessM2M(server, lifetime) as ours:
        await ours.get()
        best = await best_ns_per_iter(
            {"floor": time_floor, "token": ours.hot_token, "flow": ours.hot_flow}, runs
        )
    stampedes = [await stampede(KeylessM2M, n) for n in callers]
    return {
        "floor": best["floor"],
        "token_ns": best["token"],
        "flow_ns": best["flow"],
        "stampedes": stampedes,
    }
