"""The DPoP proof key in every KMS backend, against the project's doubles (AWS KMS on the
session's ``moto_server``, Vault transit on OpenBao and Vault, the Azure Key Vault fake,
the Cloud KMS fake): a DPoP-bound token from the embedded authorization server (which
verifies each proof with jwcrypto and demands its nonce), used at a loopback resource
server that verifies every proof with PyJWT and checks the binding. Each proof is one
KMS sign call, counted where the double counts them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keyless_m2m import ClientSecretBasic, TokenManager
from keyless_m2m.signers import Signer
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.dpop_resource_server import DPoPResourceServer, thumbprint
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "dpop-keys-secret"


async def bound_token_used_twice(signer: Signer) -> int:
    """Get a DPoP token with ``signer`` as the proof key and call an API twice with it;
    the number of proofs made (each one sign call)."""
    with AuthorizationServer(dpop="required", dpop_nonce=True) as server:
        server.register_client("svc", client_secret=SECRET)
        try:
            async with TokenManager(
                server.token_endpoint, ClientSecretBasic("svc", SECRET), dpop=signer
            ) as tokens:
                token = await tokens.get_token()
                assert token.is_dpop
                expected = thumbprint(dict((await signer.describe()).public_jwk))
                assert token.dpop_jkt == expected == server.jkt_of(token.value)
                with DPoPResourceServer(jkt_of=server.jkt_of) as api:
                    async with httpx.AsyncClient(auth=tokens.auth()) as http:
                        for path in ("/a", "/b"):
                            response = await http.get(api.url + path)
                            assert response.status_code == 200, api.records
                    assert api.proofs_verified == 2
                assert server.dpop_proofs_verified == 1 and server.dpop_nonces_demanded == 1
                return tokens.stats.dpop_proofs
        finally:
            await signer.aclose()


async def test_aws_kms_on_moto_server(aws_p256_signer: Any) -> None:
    assert await bound_token_used_twice(aws_p256_signer) == 4


async def test_vault_transit(vault_server: VaultServer) -> None:
    assert await bound_token_used_twice(vault_server.signer("ecdsa-p256")) == 4


async def test_azure_key_vault_on_the_fake(key_vault: Any) -> None:
    before = len(key_vault.sign_requests())
    assert await bound_token_used_twice(key_vault.signer("rsa", algorithm="PS256")) == 4
    assert len(key_vault.sign_requests()) == before + 4  # each proof one Key Vault sign call


async def test_cloud_kms_on_the_fake(cloud_kms: Any) -> None:
    before = cloud_kms.calls["AsymmetricSign"]
    name = f"{cloud_kms.key_ring_name}/cryptoKeys/eddsa/cryptoKeyVersions/1"
    assert await bound_token_used_twice(cloud_kms.signer(name)) == 4
    assert cloud_kms.calls["AsymmetricSign"] == before + 4
