"""Fixtures of the HTTP-client integrations' tests: the embedded authorization server
(Bearer, and DPoP with nonces) and a Bearer resource server that knows its tokens, all
on loopback and stopped after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyless_m2m import ClientSecretBasic
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.bearer_resource_server import BearerResourceServer

SECRET = "integration-s3cr3t-value"


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    """Client ``svc`` (a client secret, :data:`SECRET`); 0.2 s per token response, so that
    concurrent callers overlap."""
    with AuthorizationServer(latency=0.2) as srv:
        srv.register_client("svc", client_secret=SECRET)
        yield srv


@pytest.fixture
def dpop_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(dpop="required", dpop_nonce=True) as srv:
        srv.register_client("svc", client_secret=SECRET)
        yield srv


@pytest.fixture
def client_auth() -> ClientSecretBasic:
    """Client ``svc``'s authentication at :func:`server` and :func:`dpop_server`."""
    return ClientSecretBasic("svc", SECRET)


@pytest.fixture
def api(server: AuthorizationServer) -> Iterator[BearerResourceServer]:
    """Accepts the tokens ``server`` issued (set ``reject`` / ``reject_all`` to refuse)."""
    with BearerResourceServer(known=lambda: server.issued) as resource_server:
        yield resource_server
