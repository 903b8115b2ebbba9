"""Canary: run real flows with DEBUG logging and assert that no client secret, assertion,
access token or PEM text shows up in any log record, repr or exception (chain included)."""

from __future__ import annotations

import logging

import httpx
import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    KeylessM2MError,
    PrivateKeyJWT,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.signers import LocalSigner
from tests.helpers import exception_texts, make_key, pem_of
from tests.oidc_provider.clients import SECRET, AuthServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_nothing_secret_escapes(oidc_provider: AuthServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pem = pem_of(make_key("p256"))
    forbidden: set[str] = {SECRET, pem.decode().splitlines()[1]}
    seen: list[str] = []
    errors: list[BaseException] = []

    signer = LocalSigner.from_pem(pem, algorithm="ES256")
    jwt_auth = PrivateKeyJWT("jwt-es256", signer)
    forbidden.add((await jwt_auth.assertion(oidc_provider.token_endpoint)).split(".")[2])

    for auth in (
        jwt_auth,
        ClientSecretBasic("secret-basic", SECRET),
        ClientSecretPost("secret-post", SECRET),
    ):
        async with TokenManager(oidc_provider.token_endpoint, auth, scope="pockets.read") as tokens:
            token = await tokens.get_token()
            forbidden.add(token.value)
            seen += [
                repr(token),
                str(token),
                repr(tokens),
                repr(auth),
                repr(tokens.endpoint),
                repr(tokens.stats),
            ]
            async with httpx.AsyncClient(
                auth=tokens.auth(), transport=httpx.MockTransport(lambda r: httpx.Response(200))
            ) as http:
                await http.get("https://api.example/")
            try:
                await tokens.get_token(scope="no.such.scope")
            except KeylessM2MError as exc:
                errors.append(exc)

    # wrong secret, and a server that echoes what it was sent into its error
    wrong = "wrong-" + SECRET
    forbidden.add(wrong)
    bad = TokenEndpoint(oidc_provider.token_endpoint, ClientSecretPost("secret-post", wrong))
    try:
        await bad.request()
    except KeylessM2MError as exc:
        errors.append(exc)
    await bad.aclose()

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, json={"error": "invalid_client", "error_description": request.content.decode()}
        )

    echo_auth = PrivateKeyJWT("c", signer)
    echo_ep = TokenEndpoint(
        "https://as.example/token",
        echo_auth,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(echo)),
    )
    try:
        await echo_ep.request()
    except KeylessM2MError as exc:
        errors.append(exc)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    down = TokenEndpoint(
        "https://as.example/token",
        ClientSecretPost("c", SECRET),
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(refused)),
        max_attempts=1,
    )
    try:
        await down.request()
    except KeylessM2MError as exc:
        errors.append(exc)

    with SyncTokenManager(oidc_provider.token_endpoint, ClientSecretBasic("secret-basic", SECRET)) as sync:
        forbidden.add(sync.get_token().value)
        seen.append(repr(sync))

    assert len(errors) == 6
    for error in errors:
        seen += exception_texts(error)
    for record in caplog.records:
        seen += [record.getMessage(), repr(record.args)]
    assert len(caplog.records) > 0
    haystack = "\n".join(seen)
    leaked = [f[:12] + "..." for f in forbidden if f in haystack]
    assert not leaked, f"secrets leaked: {leaked}"
