"""The one retry policy of keyless-m2m: one backoff formula and one stop rule.

Only the token endpoint retries (signers do not: a signer's retryable error is retried
here, with a fresh assertion), so attempts never multiply across layers. The policy:

- delay before attempt ``n + 1`` (after ``n`` failures):
  ``uniform(0.5, 1) * min(max_backoff, backoff * 2 ** (n - 1))``, and at least what the
  server asked for in ``Retry-After``. The jitter keeps half the exponential step (what
  AWS calls "equal jitter") so that no retry comes back almost at once, while clients that
  failed together still spread over the other half;
- stop when ``max_attempts`` attempts were made, or when the next delay would end past
  the time budget (``deadline``): the last error is raised instead of sleeping in vain.

The deadline itself is enforced by a cancel scope around the whole request (see
:meth:`keyless_m2m.endpoint.TokenEndpoint.request`); the stop rule only avoids a pause
that could not be followed by an attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts, backoff and time budget; see the module docstring."""

    max_attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    deadline: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
        step = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 64))
        delay = step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
        return max(delay, retry_after) if retry_after is not None else delay

    def next_delay(self, attempt: int, retry_after: float | None, remaining: float) -> float | None:
        """The pause before the next attempt, or ``None`` to stop: ``attempt`` attempts
        were made, or the pause would not end within the ``remaining`` seconds."""
        if attempt >= self.max_attempts:
            return None
        delay = self.delay(attempt, retry_after)
        return delay if delay < remaining else None
