"""When a token is refreshed, when it stops being served, and how failures are paced: the
manager's time policy in one place, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._retry import RetryPolicy
from ..errors import ConfigurationError

__all__ = ["Timing", "seconds"]


def seconds(value: Any, *, zero_ok: bool) -> bool:
    """Whether ``value`` is a finite number of seconds (positive, or also zero)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value >= 0 if zero_ok else value > 0)


@dataclass(frozen=True, slots=True)
class Timing:
    """``refresh_window`` / ``expiry_leeway``: ``None`` means relative to the lifetime (a
    quarter, at most 300 s / a tenth, at most 10 s). After a failed fetch the next one
    waits the one backoff formula of :class:`~keyless_m2m._retry.RetryPolicy` with
    ``failure_backoff`` and ``max_failure_backoff``."""

    refresh_window: float | None = None
    expiry_leeway: float | None = None
    failure_backoff: float = 1.0
    max_failure_backoff: float = 60.0
    min_invalidation_interval: float = 10.0

    def __post_init__(self) -> None:
        for name in ("refresh_window", "expiry_leeway"):
            value = getattr(self, name)
            if value is not None and not seconds(value, zero_ok=True):
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")
        for name in ("failure_backoff", "max_failure_backoff", "min_invalidation_interval"):
            if not seconds(getattr(self, name), zero_ok=True):
                raise ConfigurationError(f"{name} must be a non-negative number of seconds")

    def deadlines(self, lifetime: float) -> tuple[float, float]:
        """Seconds after issue when a token enters its refresh window, and when it stops
        being usable."""
        leeway = self.expiry_leeway if self.expiry_leeway is not None else min(10.0, lifetime / 10)
        usable = max(0.0, lifetime - leeway)
        window = self.refresh_window if self.refresh_window is not None else min(300.0, lifetime / 4)
        return min(usable, max(0.0, usable - window)), usable

    def failure_delay(self, failures: int) -> float:
        """The pause after ``failures`` consecutive failed fetches of one entry."""
        return RetryPolicy(backoff=self.failure_backoff, max_backoff=self.max_failure_backoff).delay(failures)
