"""Fixtures of the ``keyless-m2m`` command's integration tests (the helpers are in
tests/cli_runner.py and tests/metadata_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import jwk_of
from tests.oidc_provider.clients import SECRET


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    """The embedded server with client ``svc`` (the session's P-256 key, scope
    ``pockets.read``) and ``secret-client`` (oidc-provider's client secret)."""
    with AuthorizationServer(expires_in=3600) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"), scopes=["pockets.read"])
        srv.register_client("secret-client", client_secret=SECRET)
        yield srv
