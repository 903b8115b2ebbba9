"""Integration fixtures: a real oidc-provider authorization server on loopback (its
clients and constants are in tests/oidc_provider/clients.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.oidc_provider.clients import AuthServer, ProviderPool


@pytest.fixture(scope="session")
def oidc_servers() -> Iterator[ProviderPool]:
    """oidc-provider in each configuration profile, each started when a test first asks
    for it (``oidc_servers.get("fapi2")``), all stopped when the session ends."""
    with ProviderPool() as pool:
        yield pool


@pytest.fixture(scope="session")
def oidc_provider(oidc_servers: ProviderPool) -> AuthServer:
    """The ``default`` configuration: every method and algorithm, any usual ``aud``."""
    return oidc_servers.get("default")
