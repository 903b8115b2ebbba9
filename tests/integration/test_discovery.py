"""Discovery against real servers: ``TokenManager.from_issuer`` with the embedded loopback
``AuthorizationServer`` (one discovery and one token request for many callers; method/alg
problems caught before any token request), a closed port, and oidc-provider's real
metadata, on asyncio and trio. The pure tests are in ``tests/unit/test_discovery.py``; the
``keyless-m2m`` command's in ``tests/integration/cli/``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from keyless_m2m import DiscoveryError, PrivateKeyJWT, TokenManager, TransportError
from keyless_m2m.discovery import DiscoveredTokenEndpoint, check_client_auth, discover
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import jwk_of
from tests.helpers import make_key, pem_of
from tests.metadata_server import CustomMetadataServer
from tests.oidc_provider.clients import AuthServer

pytestmark = pytest.mark.integration
anyio_test = pytest.mark.anyio


@anyio_test
async def test_from_issuer_discovers_once_for_many_callers() -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer() as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        tokens = TokenManager.from_issuer(srv.issuer, PrivateKeyJWT("svc", signer), scope="a b", timeout=5)
        assert isinstance(tokens.endpoint, DiscoveredTokenEndpoint)
        assert tokens.endpoint.timeout == 5  # endpoint options reach the endpoint
        async with tokens:
            results = []

            async def call() -> None:
                results.append(await tokens.get_token())

            async with anyio.create_task_group() as group:
                for _ in range(1000):
                    group.start_soon(call)
            assert len(results) == 1000 and all(t is results[0] for t in results)
            assert results[0].scope == "a b"  # manager options reach the manager
            assert srv.metadata_requests == 1 and srv.token_requests == 1
            assert tokens.token_endpoint == srv.token_endpoint
            assert tokens.endpoint.metadata is not None
            assert await tokens.endpoint.discover() is tokens.endpoint.metadata


GAPS = [
    pytest.param(
        lambda m: m.update(grant_types_supported=["authorization_code", "refresh_token"]),
        "does not list the client_credentials grant; it supports: authorization_code, refresh_token",
        "grant_unsupported",
        id="grant",
    ),
    pytest.param(
        lambda m: m.update(token_endpoint_auth_methods_supported=["client_secret_basic", "tls_client_auth"]),
        "supports: client_secret_basic, tls_client_auth",
        "method_unsupported",
        id="method",
    ),
    pytest.param(
        lambda m: m.update(token_endpoint_auth_signing_alg_values_supported=["RS256", "PS256"]),
        "accepts: RS256, PS256",
        "algorithm_unsupported",
        id="alg",
    ),
]


@pytest.mark.parametrize(("edit", "message", "reason"), GAPS)
@anyio_test
async def test_from_issuer_warns_about_metadata_that_omits_what_the_client_uses(
    edit: Callable[[dict[str, Any]], None], message: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server whose metadata leaves out the grant, the method or the algorithm it in
    fact accepts: one warning naming the gap and the strict option, then a token."""
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer(edit) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        with caplog.at_level(logging.WARNING, logger="keyless_m2m"):
            async with TokenManager.from_issuer(srv.issuer, PrivateKeyJWT("svc", signer)) as tokens:
                first = await tokens.get_token()
                assert await tokens.invalidate(first)
                await tokens.get_token()  # a second fetch: no second discovery, no second warning
        assert srv.token_requests == 2 and srv.metadata_requests == 1
    warnings = [r for r in caplog.records if r.name == "keyless_m2m" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert message in warnings[0].getMessage() and "strict_metadata=True" in warnings[0].getMessage()


@pytest.mark.parametrize(("edit", "message", "reason"), GAPS)
@anyio_test
async def test_strict_metadata_refuses_before_the_first_token_request(
    edit: Callable[[dict[str, Any]], None], message: str, reason: str
) -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer(edit) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        auth = PrivateKeyJWT("svc", signer)
        async with TokenManager.from_issuer(srv.issuer, auth, strict_metadata=True) as tokens:
            with pytest.raises(DiscoveryError, match=message) as info:
                await tokens.get_token()
        assert info.value.reason == reason
        assert srv.token_requests == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(issuer="https://evil.example"), "issuer mismatch"),
        (lambda m: m.pop("token_endpoint"), "no token_endpoint"),
    ],
)
@anyio_test
async def test_from_issuer_checks_before_the_first_token_request(
    edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    """What no leniency covers: metadata for another issuer, or without a token endpoint."""
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    with CustomMetadataServer(edit) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        async with TokenManager.from_issuer(srv.issuer, PrivateKeyJWT("svc", signer)) as tokens:
            with pytest.raises(DiscoveryError, match=message):
                await tokens.get_token()
        assert srv.token_requests == 0


@anyio_test
async def test_discovery_of_a_stopped_server_is_a_transport_error() -> None:
    srv = AuthorizationServer()
    issuer = srv.issuer
    srv.stop()  # never started: the port is closed
    with pytest.raises(TransportError, match="cannot reach"):
        await discover(issuer)


@anyio_test
async def test_discovery_of_oidc_provider(oidc_provider: AuthServer) -> None:
    metadata = await discover(oidc_provider.issuer)
    assert metadata.token_endpoint == oidc_provider.token_endpoint
    assert metadata.url.endswith("/.well-known/oauth-authorization-server")
    assert check_client_auth(metadata, "private_key_jwt", "ES256") == []
    with pytest.raises(DiscoveryError, match="private_key_jwt, client_secret_basic, client_secret_post"):
        check_client_auth(metadata, "tls_client_auth")
    with pytest.raises(DiscoveryError, match="accepts: RS256"):
        check_client_auth(metadata, "private_key_jwt", "HS256")
    with pytest.raises(DiscoveryError, match="issuer mismatch"):
        await discover(oidc_provider.issuer + "/")
    with pytest.raises(DiscoveryError, match="no authorization server metadata"):
        await discover(oidc_provider.issuer + "/no/such/tenant")


@anyio_test
async def test_from_issuer_with_oidc_provider(oidc_provider: AuthServer) -> None:
    auth = PrivateKeyJWT("jwt-es256", oidc_provider.signers["ES256"])
    async with TokenManager.from_issuer(oidc_provider.issuer, auth, scope="pockets.read") as tokens:
        token = await tokens.get_token()
        assert token.scope == "pockets.read"
        assert tokens.token_endpoint == oidc_provider.token_endpoint
        assert tokens.stats.requests == 1
