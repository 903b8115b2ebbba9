"""Hypothesis profiles for the fuzz tests.

``ci`` (the default): 60 examples per property, no deadline (shared CI machines are
slow), so the suite stays fast. ``long``: 3,000 examples, for ``nox -s fuzz``; choose it
with ``KEYLESS_M2M_FUZZ=long`` (or any profile name registered here).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.register_profile(
    "long", max_examples=3_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("KEYLESS_M2M_FUZZ", "ci"))
