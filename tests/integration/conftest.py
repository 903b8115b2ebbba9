"""Integration fixtures: a real oidc-provider authorization server on loopback (its
clients and constants are in tests/oidc_provider/clients.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oidc_provider.clients import AuthServer, running_provider


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[AuthServer]:
    with running_provider() as server:
        yield server
