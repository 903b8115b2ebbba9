"""Integration fixtures: a real oidc-provider authorization server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Re-exported for tests/integration/test_cli_and_discovery.py until it imports them from
# tests.oidc_provider.clients itself.
from tests.oidc_provider.clients import SECRET, AuthServer, public_jwk_of, running_provider

__all__ = ["SECRET", "AuthServer", "public_jwk_of"]


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[AuthServer]:
    with running_provider() as server:
        yield server
