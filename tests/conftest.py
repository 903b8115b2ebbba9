"""Shared fixtures: the anyio backend matrix, the independent verifier, a fresh discovery
cache and garbage collection around every test. Helpers live in ``tests/helpers.py``."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

# Imported before the first gc.freeze() below: at import, hypothesis runs trio's plugin
# hook, whose register_random() looks for its referrers with gc.get_referrers(), which
# does not see frozen objects (it would warn, and warnings are errors here).
import hypothesis  # noqa: F401
import pytest

from keyless_m2m.discovery import clear_metadata_cache
from tests.helpers import verify_jws


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--aws-double",
        choices=("moto", "localstack"),
        default="moto",
        help="the AWS double the AWS KMS integration tests (tests/integration/signers/test_aws.py) "
        "run against: moto_server (default) or LocalStack (nox -s localstack, which sets "
        "KEYLESS_M2M_LOCALSTACK_PYTHON)",
    )


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
    test that leaked it (``filterwarnings = error`` turns it into a failure there).

    Then ``gc.freeze()``: what survived is moved out of the collector's generations, so the
    next test's collection scans only the objects created since, not every module, SDK
    and fixture loaded so far (a full collection of a worker's heap cost ~0.2 s a test,
    about half of CI). A test's own garbage is still collected in its own teardown."""
    yield
    gc.collect()
    gc.freeze()
