"""``keyless_m2m.testing.clock.ManualClock``: the manager's refresh window, expiry, failure
backoff and shared-cache ages move with ``advance()``; everything is put back on exit (also
on an exception); clocks do not nest; and a scan of the package proves the registry names
every module that reads the clock. Asyncio and trio; no test here sleeps."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import pytest

import keyless_m2m
import keyless_m2m.testing
from keyless_m2m import AccessToken, SyncTokenManager, TokenManager, TransportError
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.errors import ConfigurationError
from keyless_m2m.manager import _core
from keyless_m2m.testing import ManualClock
from keyless_m2m.testing.clock import CLOCK_READERS
from keyless_m2m.testing.endpoints import OfflineTokenEndpoint

anyio_test = pytest.mark.anyio
PACKAGE = Path(keyless_m2m.__file__).parent
REAL = {"monotonic": time.monotonic, "time": time.time}

# 3600 s tokens with the default timing: usable for 3590 s (a tenth, at most 10 s, of
# leeway), refreshed from 3290 s on (a quarter, at most 300 s, before that).
REFRESH_AFTER, USABLE = 3290.0, 3590.0


def library_monotonic() -> float:
    """What the manager reads as monotonic() right now."""
    value: float = vars(_core)["monotonic"]()
    return value


def installed_names() -> dict[tuple[str, str], object]:
    import importlib

    return {
        (module, name): getattr(importlib.import_module(module), name)
        for module, names in CLOCK_READERS
        for name in names
    }


class FailingEndpoint(OfflineTokenEndpoint):
    """Fails the next ``failures`` requests with a retryable TransportError."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def request(
        self,
        *,
        scope: str | None = None,
        resource: Sequence[str] = (),
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> AccessToken:
        if self.failures:
            self.failures -= 1
            self.calls += 1
            raise TransportError("the token endpoint is down", reason="connect")
        return await super().request(scope=scope, resource=resource, audience=audience)


class GetOnlyCache:
    """A shared cache that cannot say how long its entries have left (only ``get``): the
    manager ages its tokens by the wall clock."""

    def __init__(self) -> None:
        self.inner = MemoryTokenCache()
        self.acquire, self.put, self.release = self.inner.acquire, self.inner.put, self.inner.release
        self.wait, self.aclose = self.inner.wait, self.inner.aclose

    async def get(self, key: str) -> AccessToken | None:
        return await self.inner.get(key)


# -- the manager's time decisions --------------------------------------------------------


@anyio_test
async def test_the_refresh_window_is_reached_by_advance_in_the_background() -> None:
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    with ManualClock() as clock:
        async with TokenManager(endpoint=endpoint) as tokens:
            first = await tokens.get_token()
            clock.advance(REFRESH_AFTER - 1)
            assert await tokens.get_token() is first and tokens.stats.refreshes == 1
            clock.advance(2)  # inside the refresh window now
            assert await tokens.get_token() is first  # served at once; the refresh starts
            while endpoint.calls < 2 or tokens._default_entry.flight is not None:
                await anyio.sleep(0)  # a checkpoint for the background flight, not a wait on time
            second = await tokens.get_token()
    assert second != first and endpoint.calls == 2 and tokens.stats.refreshes == 2


@anyio_test
async def test_the_refresh_window_is_reached_by_advance_inline() -> None:
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    with ManualClock() as clock:
        tokens = TokenManager(endpoint=endpoint)
        try:
            first = await tokens.get_token()
            clock.advance(REFRESH_AFTER + 1)
            second = await tokens.get_token()  # bare mode: this caller refreshes
            assert second != first and endpoint.calls == 2
            assert await tokens.get_token() is second and endpoint.calls == 2
        finally:
            await tokens.aclose()


@anyio_test
async def test_expiry_is_reached_by_advance() -> None:
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    with ManualClock() as clock:
        async with TokenManager(endpoint=endpoint, refresh_window=0) as tokens:
            first = await tokens.get_token()
            clock.advance(USABLE - 1)
            assert await tokens.get_token() is first and endpoint.calls == 1
            clock.advance(1)  # no longer usable: the next caller waits for a new token
            second = await tokens.get_token()
            assert second != first and endpoint.calls == 2
            assert second.expires_at > first.expires_at  # its wall-clock expiry moved too
            assert not second.expires_within(3599) and second.expires_within(3601)


@anyio_test
async def test_the_failure_backoff_is_passed_by_advance() -> None:
    endpoint = FailingEndpoint(failures=2)
    with ManualClock() as clock:
        async with TokenManager(endpoint=endpoint, failure_backoff=10, max_failure_backoff=10) as tokens:
            with pytest.raises(TransportError):
                await tokens.get_token()
            for _ in range(5):  # jittered backoff: at least half of 10 s
                clock.advance(0.9)
                with pytest.raises(TransportError):  # the same error, no request
                    await tokens.get_token()
            assert endpoint.calls == 1
            clock.advance(5.6)  # 10.1 s in all: past the backoff, fails again
            with pytest.raises(TransportError):
                await tokens.get_token()
            assert endpoint.calls == 2
            clock.advance(10.1)
            assert (await tokens.get_token()).value and endpoint.calls == 3


@anyio_test
async def test_the_invalidation_floor_is_passed_by_advance() -> None:
    endpoint = OfflineTokenEndpoint()
    with ManualClock() as clock:
        async with TokenManager(endpoint=endpoint, min_invalidation_interval=10) as tokens:
            assert await tokens.invalidate(await tokens.get_token())
            second = await tokens.get_token()
            assert not await tokens.invalidate(second)  # within the floor
            clock.advance(10)
            assert await tokens.invalidate(second)
            assert (await tokens.get_token()) != second and endpoint.calls == 3


@anyio_test
async def test_shared_ages_by_the_wall_clock_follow_the_clock() -> None:
    """A cache with only ``get`` ages its tokens by wall-clock expiry and ``time()``: both
    come from the clock, so an adopted token is as old as the clock says."""
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    cache = GetOnlyCache()
    with ManualClock() as clock:
        a, b, c = (TokenManager(endpoint=endpoint, cache=cache) for _ in range(3))
        try:
            first = await a.get_token()
            clock.advance(REFRESH_AFTER - 10)
            assert await b.get_token() == first and b.stats.shared_hits == 1
            # b adopted it 3280 s old: it enters b's refresh window when it does a's.
            assert b._default_entry.current.refresh_at == pytest.approx(
                a._default_entry.current.refresh_at, abs=0.5
            )
            clock.advance(20)  # now in its refresh window: c does not adopt it
            assert await c.get_token() != first and c.stats.shared_hits == 0
            assert endpoint.calls == 2
        finally:
            for manager in (a, b, c):
                await manager.aclose()


@anyio_test
async def test_a_memory_cache_lease_runs_out_by_advance() -> None:
    cache = MemoryTokenCache()
    with ManualClock() as clock:
        first = await cache.acquire("k", ttl=30)
        assert first is not None and await cache.acquire("k", ttl=30) is None
        clock.advance(30)
        second = await cache.acquire("k", ttl=30)
        assert second is not None and second > first


def test_the_sync_facade_reads_the_clock_too() -> None:
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    with ManualClock() as clock, SyncTokenManager(endpoint=endpoint) as tokens:
        first = tokens.get_token()
        assert tokens.get_token() is first
        clock.advance(USABLE)
        assert tokens.get_token() != first and endpoint.calls == 2


# -- installing and restoring -------------------------------------------------------------


def test_outside_a_clock_the_library_reads_time_itself() -> None:
    """Production pays nothing: the names are the standard library's own functions, and
    get_token() reads ``monotonic`` as a global either way."""
    assert all(value is REAL[name] for (_, name), value in installed_names().items())
    names = TokenManager.get_token.__code__.co_names
    assert "monotonic" in names and not [n for n in names if "clock" in n.lower()]


def test_every_name_is_replaced_inside_and_restored_on_exit() -> None:
    with ManualClock() as clock:
        assert clock.advanced == 0
        for (_, name), value in installed_names().items():
            assert value == getattr(clock, name)
        before = library_monotonic()
        clock.advance(100)
        assert library_monotonic() - before >= 100 and clock.advanced == 100
        assert abs(library_monotonic() - time.monotonic() - 100) < 1
    assert all(value is REAL[name] for (_, name), value in installed_names().items())


def test_everything_is_restored_on_an_exception() -> None:
    with pytest.raises(KeyError, match="the test's own"):  # noqa: PT012 - the block is the point
        with ManualClock() as clock:
            clock.advance(3600)
            raise KeyError("the test's own")
    assert all(value is REAL[name] for (_, name), value in installed_names().items())
    with ManualClock():  # and a new clock can be installed afterwards
        pass


def test_clocks_do_not_nest() -> None:
    with ManualClock() as outer:
        with pytest.raises(RuntimeError, match="another ManualClock is already installed"), ManualClock():
            pass
        with pytest.raises(RuntimeError, match="this ManualClock is already installed"), outer:
            pass
        outer.advance(5)  # the refused entries left the installed clock alone
        assert library_monotonic() - time.monotonic() == pytest.approx(5, abs=1)
    assert vars(_core)["monotonic"] is time.monotonic


def test_advance_takes_non_negative_finite_seconds() -> None:
    clock = ManualClock()
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="non-negative seconds"):
            clock.advance(bad)
    with pytest.raises(TypeError, match="number of seconds"):
        clock.advance(True)
    clock.advance(0)
    assert clock.advanced == 0 and "not installed" in repr(clock)


@anyio_test
async def test_the_pytest_fixture(manual_clock: ManualClock) -> None:
    assert vars(_core)["monotonic"] == manual_clock.monotonic
    endpoint = OfflineTokenEndpoint()
    async with TokenManager(endpoint=endpoint) as tokens:
        first = await tokens.get_token()
        manual_clock.advance(3600)
        assert await tokens.get_token() != first


def test_exported_from_the_testing_package() -> None:
    assert keyless_m2m.testing.ManualClock is ManualClock
    assert keyless_m2m.testing.__all__ == ["ManualClock"]


# -- the documented example (docs/testing.md, "A clock you control") ----------------------


@pytest.mark.anyio
async def test_my_client_gets_a_new_token_after_expiry(manual_clock: ManualClock) -> None:
    endpoint = OfflineTokenEndpoint(expires_in=3600)
    async with TokenManager(endpoint=endpoint) as tokens:
        first = await tokens.get_token()
        manual_clock.advance(3600)  # past its expiry, without sleeping
        second = await tokens.get_token()
    assert second != first and endpoint.calls == 2


def test_the_documented_example_is_this_test() -> None:
    text = (PACKAGE.parent / "docs" / "testing.md").read_text(encoding="utf-8")
    section = text.split("\n## A clock you control\n", 1)[1].split("\n## ", 1)[0]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert inspect.getsource(test_my_client_gets_a_new_token_after_expiry) in example
    for line in ("from keyless_m2m import TokenManager", "from keyless_m2m.testing import ManualClock"):
        assert line in example


# -- the registry is complete -------------------------------------------------------------

CLOCK_FUNCTIONS = {"monotonic", "monotonic_ns", "time", "time_ns", "perf_counter", "perf_counter_ns"}

# Clock reads the manual clock deliberately leaves on real time, and why. A new read must
# go into CLOCK_READERS (keyless_m2m/testing/clock.py) or here, with its reason.
REAL_TIME = {
    ("keyless_m2m.client_auth", "time.time"): "an assertion's iat/exp: the server checks them on its clock",
    ("keyless_m2m.dpop", "time.time"): "a DPoP proof's iat: the server checks it on its clock",
    ("keyless_m2m.assertions", "time.time"): "a platform JWT's exp, set and checked on real clocks",
    ("keyless_m2m.discovery", "datetime.now"): "the local time of an answer, against the server's Date",
    ("keyless_m2m.endpoint", "datetime.now"): "a Retry-After date; local time against the Date",
    ("keyless_m2m.certificates", "datetime.now"): "certificate validity, checked by the server on its clock",
    ("keyless_m2m.cli._demo", "from time import perf_counter"): "the demo prints real durations",
    ("keyless_m2m.integrations.opentelemetry", "from time import perf_counter"): "span and metric durations",
    ("keyless_m2m.testing.authorization_server", "time.time"): "the server's own clock",
    ("keyless_m2m.testing.emulators.azure_key_vault", "time.time"): "the emulated vendor's own clock",
    ("keyless_m2m.testing.contract", "datetime.now"): "sample tokens for a user's cache under test",
    ("keyless_m2m.testing.tls", "datetime.datetime.now"): "certificate validity, checked by the TLS peer",
    ("keyless_m2m.testing.clock", "from time import monotonic as _real_monotonic"): "the clock's real time",
    ("keyless_m2m.testing.clock", "from time import time as _real_time"): "the clock's real time",
}


def clock_reads(source: str) -> set[str]:
    """Every way ``source`` reads a clock: ``from time import X [as Y]``, ``time.X`` (also
    through ``import time as t``), ``datetime.now()`` and its kin."""
    tree = ast.parse(source)
    time_modules = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "time"
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            for alias in node.names:
                if alias.name in CLOCK_FUNCTIONS or alias.name == "*":
                    renamed = f" as {alias.asname}" if alias.asname else ""
                    found.add(f"from time import {alias.name}{renamed}")
        elif isinstance(node, ast.Attribute) and node.attr in CLOCK_FUNCTIONS | {"now", "utcnow", "today"}:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in time_modules and node.attr in CLOCK_FUNCTIONS:
                found.add(f"time.{node.attr}")
            elif isinstance(owner, ast.Name) and owner.id in ("datetime", "date"):
                found.add(f"{owner.id}.{node.attr}")
            elif isinstance(owner, ast.Attribute) and owner.attr in ("datetime", "date"):
                found.add(f"datetime.{owner.attr}.{node.attr}")
    return found


def package_clock_reads() -> dict[str, set[str]]:
    reads = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = clock_reads(path.read_text(encoding="utf-8"))
        if found:
            reads[module] = found
    return reads


def test_the_scan_sees_every_spelling_of_a_clock_read() -> None:
    source = (
        "import time as t\nfrom time import perf_counter as pc, sleep\nimport datetime\n"
        "from datetime import datetime as dt\n"
        "a = t.time(); b = datetime.datetime.now(); c = datetime.date.today()\n"
    )
    assert clock_reads(source) == {
        "time.time",
        "from time import perf_counter as pc",
        "datetime.datetime.now",
        "datetime.date.today",
    }
    assert clock_reads("from time import sleep\nimport anyio\nanyio.current_time()\n") == set()


def test_every_module_that_reads_the_clock_is_in_the_registry() -> None:
    registry = dict(CLOCK_READERS)
    reads = package_clock_reads()
    problems = []
    for module, found in reads.items():
        controlled = {f"from time import {name}" for name in registry.get(module, ())}
        for read in sorted(found - controlled):
            if (module, read) not in REAL_TIME:
                problems.append(
                    f"{module}: {read!r} is neither in CLOCK_READERS nor left to real time with a reason"
                )
    for module, names in registry.items():
        missing = {f"from time import {name}" for name in names} - reads.get(module, set())
        if missing:  # the clock would replace a name that is not the module's clock
            problems.append(f"{module}: CLOCK_READERS names {sorted(missing)}, which it does not import")
    for module, read in REAL_TIME:
        if read not in reads.get(module, set()):
            problems.append(f"{module}: REAL_TIME lists {read!r}, which it no longer does")
    assert problems == []
    assert len(registry) == len(CLOCK_READERS)  # one entry per module
