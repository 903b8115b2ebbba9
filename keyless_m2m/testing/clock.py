"""``ManualClock``: the library's clock under a test's control, so a test moves past a
token's refresh window, its expiry, a failure backoff or a lease with ``advance(seconds)``
instead of sleeping.

>>> with ManualClock() as clock:
...     first = await tokens.get_token()
...     clock.advance(3600)            # the token has expired: no sleep
...     assert await tokens.get_token() != first

Every time decision of keyless-m2m is a read of ``monotonic()`` (or, for a token's age and
wall-clock expiry, ``time()``), named at module level in the modules of
:data:`CLOCK_READERS`. On entry the clock replaces those names with its own
:meth:`ManualClock.monotonic` and :meth:`ManualClock.time`; on exit (also on an exception)
it puts the originals back. Nothing changes outside the block: production code reads
``time.monotonic`` itself, and ``TokenManager.get_token()`` does the same global lookup
and call with or without a clock.

The clock keeps running at the real rate and ``advance()`` jumps it forward: the library
has loops that wait until ``monotonic()`` passes a deadline while they sleep on the event
loop (the Redis cache's wait for a lease release, the shared tier's ``cache_wait``), and a
frozen clock would never let them end. Use lifetimes much longer than the test takes
(``expires_in=3600``) and advance past them.

What it does not control: anything that sleeps or times out runs on the event loop's
clock (``anyio.sleep``, ``move_on_after``), so the endpoint's ``backoff`` pauses, its
``timeout`` and ``deadline``, and a memory cache ``wait()`` already asleep are real time;
``advance()`` wakes no sleeping task (the next call sees the new time: a background
refresh is started by the first ``get_token()`` that finds the token in its refresh
window, not by a timer). Nor other parties' clocks: a client assertion's ``iat``/``exp``
(the authorization server checks them on its own clock), Redis's own key TTLs, the test
kit's servers and emulators.
"""

from __future__ import annotations

import importlib
import math
import threading
from time import monotonic as _real_monotonic
from time import time as _real_time
from types import ModuleType, TracebackType
from typing import Final, Self

from ..errors import ConfigurationError

__all__ = ["CLOCK_READERS", "ManualClock"]

# The one registry of the modules whose module-level clock names the clock replaces, and
# which names. A module that reads the clock for a decision belongs here, reading it as
# ``from time import monotonic`` (or ``time``); tests/unit/testing/test_clock.py scans the
# package and fails on a clock read that is neither here nor explicitly left to real time.
CLOCK_READERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("keyless_m2m.manager._core", ("monotonic",)),  # refresh_at, retry_at, invalidation floor
    ("keyless_m2m.manager._entries", ("monotonic",)),  # usable / expired
    ("keyless_m2m.manager._shared", ("monotonic", "time")),  # shared ages, TTLs written
    ("keyless_m2m.sync", ("monotonic",)),  # the facade's own hot path
    ("keyless_m2m.cache.memory", ("monotonic",)),  # token TTLs and leases
    ("keyless_m2m.cache.redis", ("monotonic",)),  # marked-down backoff, wait bounds
    ("keyless_m2m.discovery", ("monotonic",)),  # metadata max_age
    ("keyless_m2m.endpoint", ("monotonic",)),  # attempt timings
    ("keyless_m2m.token", ("time",)),  # utc_now(): expires_at of parsed tokens, expires_within
)

_lock = threading.Lock()
_installed: ManualClock | None = None


class ManualClock:
    """The library's clock, moved forward by :meth:`advance`; see the module docstring.

    Use it as ``with ManualClock() as clock:`` (or the ``manual_clock`` pytest fixture).
    One clock at a time: entering a second one (or this one again) raises
    ``RuntimeError``. Create the managers and caches whose time it should control inside
    the block: a deadline taken under the clock keeps its offset after it exits.
    """

    __slots__ = ("_offset", "_saved")

    def __init__(self) -> None:
        self._offset = 0.0
        self._saved: list[tuple[ModuleType, str, object]] = []

    def __repr__(self) -> str:
        state = "installed" if _installed is self else "not installed"
        return f"ManualClock(advanced={self._offset:g}, {state})"

    @property
    def advanced(self) -> float:
        """The seconds :meth:`advance` has added in all."""
        return self._offset

    def monotonic(self) -> float:
        """What the library reads as ``time.monotonic()``: the real one plus :attr:`advanced`."""
        return _real_monotonic() + self._offset

    def time(self) -> float:
        """What the library reads as ``time.time()`` for token ages and wall-clock expiries:
        the real one plus :attr:`advanced`."""
        return _real_time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (never back: a monotonic clock does not)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"advance() takes a number of seconds, not {type(seconds).__name__}")
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigurationError(f"advance() takes finite, non-negative seconds, not {seconds!r}")
        self._offset += seconds

    def __enter__(self) -> Self:
        global _installed
        with _lock:
            if _installed is not None:
                which = "this ManualClock is" if _installed is self else "another ManualClock is"
                raise RuntimeError(
                    f"{which} already installed: keyless-m2m has one clock; advance that one "
                    "instead of nesting clocks"
                )
            saved: list[tuple[ModuleType, str, object]] = []
            try:
                for name, attributes in CLOCK_READERS:
                    module = importlib.import_module(name)
                    for attribute in attributes:
                        original = getattr(module, attribute)
                        saved.append((module, attribute, original))
                        setattr(module, attribute, getattr(self, attribute))
            except BaseException:
                _restore(saved)
                raise
            self._saved = saved
            _installed = self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _installed
        with _lock:
            if _installed is not self:
                return
            saved, self._saved = self._saved, []
            _installed = None
            _restore(saved)


def _restore(saved: list[tuple[ModuleType, str, object]]) -> None:
    for module, attribute, original in reversed(saved):
        setattr(module, attribute, original)
