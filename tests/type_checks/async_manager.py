"""TokenManager with private_key_jwt, the httpx async client, discovery and DPoP."""

from __future__ import annotations

from datetime import datetime

import httpx

from keyless_m2m import AccessToken, PrivateKeyJWT, TokenManager
from keyless_m2m.dpop import DPoPKey
from keyless_m2m.signers import LocalSigner, Signer, signer_from_uri


async def readme_first_screen(signer: LocalSigner) -> int:
    auth = PrivateKeyJWT(client_id="my-client", signer=signer)
    async with TokenManager(
        token_endpoint="https://auth.example/api/oauth2/token", client_auth=auth, scope="pockets.read"
    ) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth()) as http:
            response = await http.get("https://api.example/v2/pockets/")
            return response.status_code


async def signer_from_a_uri() -> str:
    signer: Signer = signer_from_uri("awskms:///alias/my-client?region=eu-west-1")
    description = await signer.describe()
    auth = PrivateKeyJWT("my-client", signer, lifetime=60)
    async with TokenManager.from_issuer("https://auth.example", auth, scope=["a", "b"]) as tokens:
        token: AccessToken = await tokens.get_token()
        narrower = await tokens.get_token("a", resource="https://api.example/", audience=None)
        expires: datetime = token.expires_at
        await tokens.invalidate(narrower)
        return f"{description.key_id} {token.token_type} {expires.isoformat()} {token.scope}"


async def per_request_scope(tokens: TokenManager) -> httpx.Response:
    auth = tokens.auth("pockets.write", resource=["https://api.example/"])
    async with httpx.AsyncClient(auth=auth) as http:
        return await http.post("https://api.example/v2/pockets/", json={})


async def dpop_bound(signer: Signer) -> bool:
    auth = PrivateKeyJWT("my-client", signer)
    async with TokenManager(
        token_endpoint="https://auth.example/token", client_auth=auth, dpop=DPoPKey.generate()
    ) as tokens:
        token = await tokens.get_token()
        is_dpop: bool = token.is_dpop
        return is_dpop and token.dpop_jkt is not None


async def misuse(tokens: TokenManager, token: AccessToken) -> None:
    tokens.get_token()  # type: ignore[unused-coroutine]
    token.value = "forged"  # type: ignore[misc]
    TokenManager(token_endpoint="https://auth.example/token", client_auth="secret")  # type: ignore[arg-type]
    await tokens.get_token(scope=3)  # type: ignore[arg-type]
    # httpx2's flow is not an httpx.Auth: it goes to an httpx2 client.
    httpx.AsyncClient(auth=tokens.auth(library="httpx2"))  # type: ignore[arg-type]
