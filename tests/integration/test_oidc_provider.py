"""End to end against a real oidc-provider: private_key_jwt per alg, client secrets,
typed errors for a wrong key and an unknown scope, aud = endpoint and aud = issuer."""

from __future__ import annotations

import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    InvalidClientError,
    InvalidScopeError,
    PrivateKeyJWT,
    TokenManager,
)
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.signers import LocalSigner
from tests.helpers import make_key, pem_of
from tests.oidc_provider.clients import JWT_ALGS, SECRET, AuthServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.mark.parametrize("alg", JWT_ALGS)
async def test_private_key_jwt_per_algorithm(oidc_provider: AuthServer, alg: str) -> None:
    auth = PrivateKeyJWT(f"jwt-{alg.lower()}", oidc_provider.signers[alg])
    async with TokenManager(oidc_provider.token_endpoint, auth, scope="pockets.read") as tokens:
        token = await tokens.get_token()
        assert token.value and token.token_type == "Bearer" and token.scope == "pockets.read"
        assert 0 < token.expires_in <= 900
        assert tokens.stats.requests == 1 and tokens.stats.signatures == 1
        assert await tokens.get_token() is token


@pytest.mark.parametrize("auth_cls", [ClientSecretBasic, ClientSecretPost])
async def test_client_secrets(oidc_provider: AuthServer, auth_cls: type[ClientSecretBasic]) -> None:
    client_id = "secret-basic" if auth_cls is ClientSecretBasic else "secret-post"
    endpoint = TokenEndpoint(oidc_provider.token_endpoint, auth_cls(client_id, SECRET))
    wrong = TokenEndpoint(oidc_provider.token_endpoint, auth_cls(client_id, "wrong-secret"))
    try:
        token = await endpoint.request(scope="transfers.read pockets.read")
        assert token.scopes == {"transfers.read", "pockets.read"}
        with pytest.raises(InvalidClientError):
            await wrong.request()
    finally:
        await endpoint.aclose()
        await wrong.aclose()


async def test_wrong_key_is_invalid_client(oidc_provider: AuthServer) -> None:
    stranger = LocalSigner.from_pem(pem_of(make_key("rsa-b")))
    endpoint = TokenEndpoint(oidc_provider.token_endpoint, PrivateKeyJWT("jwt-rs256", stranger))
    with pytest.raises(InvalidClientError) as info:
        await endpoint.request(scope="pockets.read")
    assert info.value.status_code in (400, 401) and not info.value.retryable
    assert endpoint.stats.requests == 1  # never retried
    await endpoint.aclose()


async def test_unknown_scope_is_invalid_scope(oidc_provider: AuthServer) -> None:
    endpoint = TokenEndpoint(
        oidc_provider.token_endpoint, PrivateKeyJWT("jwt-es256", oidc_provider.signers["ES256"])
    )
    with pytest.raises(InvalidScopeError):
        await endpoint.request(scope="pockets.read not.a.scope")
    await endpoint.aclose()


async def test_issuer_audience_is_accepted(oidc_provider: AuthServer) -> None:
    auth = PrivateKeyJWT("jwt-eddsa", oidc_provider.signers["EdDSA"], issuer=oidc_provider.issuer)
    endpoint = TokenEndpoint(oidc_provider.token_endpoint, auth)
    assert (await endpoint.request(scope="pockets.read")).value
    await endpoint.aclose()


async def test_scope_sets_are_separate_entries(oidc_provider: AuthServer) -> None:
    auth = PrivateKeyJWT("jwt-ps256", oidc_provider.signers["PS256"])
    async with TokenManager(oidc_provider.token_endpoint, auth, scope="pockets.read") as tokens:
        a = await tokens.get_token()
        b = await tokens.get_token(scope="transfers.read pockets.read")
        c = await tokens.get_token(scope="pockets.read transfers.read")
        assert a != b and b is c and tokens.stats.requests == 2
