"""Fixtures of the unit tests (the helpers are in named modules: tests/helpers.py,
tests/manager_rig.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.manager_rig import CountingSigner


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(expires_in=3600) as srv:
        yield srv


@pytest.fixture
def signer(server: AuthorizationServer) -> CountingSigner:
    signer = CountingSigner()
    server.register_client("svc", public_jwk=dict(signer.inner._description.public_jwk))  # type: ignore[union-attr]
    return signer
