"""Shared fixtures: the anyio backend matrix, the independent verifier, a fresh discovery
cache and garbage collection around every test. Helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyless_m2m.discovery import clear_metadata_cache
from tests.helpers import verify_jws


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def verifier() -> Callable[..., dict[str, Any]]:
    return verify_jws


@pytest.fixture(autouse=True)
def _fresh_metadata_cache() -> Iterator[None]:
    """No test sees metadata another test discovered (the cache is process-wide)."""
    clear_metadata_cache()
    yield
    clear_metadata_cache()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after every test so a leaked socket or unclosed client is reported by the
    test that leaked it (``filterwarnings = error`` turns it into a failure there)."""
    yield
    gc.collect()
