"""Where the hot path's nanoseconds go: ``TokenManager.get_token()`` rebuilt one step
at a time (stand-ins with the same shape as the real method), and the pieces of the
per-request httpx auth step. Each line is timed like the hot-path table (best of N,
tight loop, GC off), so the differences between lines are the cost of each step."""

from __future__ import annotations

from time import monotonic, perf_counter_ns
from typing import Any

import httpx

from .contenders import API_URL, Timed


class _Entry:
    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current = ("token", float("inf"), float("inf"))


class _Steps:
    def __init__(self) -> None:
        self._default_entry = _Entry()
        self._hot: Any = "token"

    async def bound_method(self) -> None:
        return None

    async def with_signature(self, scope: Any = None, *, resource: Any = None, audience: Any = None) -> None:
        return None

    async def with_default_entry(
        self, scope: Any = None, *, resource: Any = None, audience: Any = None
    ) -> Any:
        if scope is None and resource is None and audience is None:
            return self._default_entry
        return None

    async def with_cached_tuple(
        self, scope: Any = None, *, resource: Any = None, audience: Any = None
    ) -> Any:
        if scope is None and resource is None and audience is None:
            entry = self._default_entry
        current = entry.current
        if current[1] > 0.0:
            return current[0]
        return None

    async def with_clock(self, scope: Any = None, *, resource: Any = None, audience: Any = None) -> Any:
        if scope is None and resource is None and audience is None:
            entry = self._default_entry
        current = entry.current
        if monotonic() < current[1]:
            return current[0]
        return None

    async def with_timer_flag(self, scope: Any = None, *, resource: Any = None, audience: Any = None) -> Any:
        """The design not taken: a token a timer clears at its refresh time, no clock read
        per call (see docs/benchmarks.md, "Hot path and stampedes")."""
        if scope is None and resource is None and audience is None:
            hot = self._hot
            if hot is not None:
                return hot
        return None


def stand_ins() -> dict[str, Timed]:
    """The full stand-in with the clock read, and the timer-flag alternative."""
    steps = _Steps()
    return {"stand-in:clock": _awaiting(steps.with_clock), "stand-in:flag": _awaiting(steps.with_timer_flag)}


def _awaiting(method: Any) -> Any:
    async def timed(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            await method()
        return perf_counter_ns() - t0

    return timed


def _calling(function: Any) -> Any:
    async def timed(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            function()
        return perf_counter_ns() - t0

    return timed


async def _auth_generator(request: Any) -> Any:
    yield request


def _inline_import() -> None:
    from keyless_m2m.manager import TokenManager  # noqa: F401 - what BearerFlow does per request


def step_ops() -> list[tuple[str, Timed]]:
    """Stand-ins for ``get_token()`` built up one step at a time, then the pieces of the
    per-request auth step; ``hot_path`` times them together with everything else."""
    steps = _Steps()
    ops: list[tuple[str, Timed]] = [
        (label, _awaiting(method))
        for label, method in (
            ("+ a bound method instead of a function", steps.bound_method),
            ("+ the (scope, *, resource, audience) signature", steps.with_signature),
            ("+ the three `is None` checks, default entry", steps.with_default_entry),
            ("+ read entry.current, compare, return token", steps.with_cached_tuple),
            ("+ `monotonic()` for the freshness check", steps.with_clock),
        )
    ]
    request = httpx.Request("GET", API_URL)

    async def agen(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            flow = _auth_generator(request)
            await flow.__anext__()
            await flow.aclose()
        return perf_counter_ns() - t0

    def set_header() -> None:
        request.headers["Authorization"] = "Bearer at_0123456789abcdef0123456789"

    ops.append(("auth step: async generator create + __anext__ + aclose", agen))
    ops.append(("auth step: `request.headers['Authorization'] = ...` (a call)", _calling(set_header)))
    ops.append(("auth step: the function-level `from ..manager import` (a call)", _calling(_inline_import)))
    ops.append(("auth step: `request.content`, replayable? (a call)", _calling(lambda: request.content)))
    return ops
