"""The MCP SDK's client against a loopback MCP server (the SDK's own server side over
streamable HTTP) that requires a token of the embedded authorization server: the SDK's
private_key_jwt provider with our assertion callback (keyless_m2m.integrations.mcp), and
the simplest path, a token manager's httpx2 auth. The server runs in a thread on its own
asyncio loop; the client side runs on asyncio and trio (the SDK is anyio)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from keyless_m2m import ConfigurationError, PrivateKeyJWT, TokenManager, WorkloadIdentity
from keyless_m2m.assertions import FileAssertion, SpiffeJwtSvidAssertion
from keyless_m2m.integrations.mcp import MemoryTokenStorage, assertion_provider, oauth_provider
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner
from tests.mcp_server import SCOPE, McpTestServer
from tests.workload_platforms import TestIssuer

pytestmark = pytest.mark.anyio


@pytest.fixture
def auth_server() -> Iterator[AuthorizationServer]:
    # aud must be the issuer identifier: what the SDK asks for (rfc7523bis), strictly.
    with AuthorizationServer(assertion_audience="issuer") as server:
        # The SDK refuses authorization server metadata without an authorization_endpoint
        # (RFC 8414 makes it optional for a server without the code grant).
        server.extra_metadata = {"authorization_endpoint": server.issuer + "/authorize"}
        yield server


@pytest.fixture
def signer(auth_server: AuthorizationServer) -> InMemorySigner:
    signer = InMemorySigner()
    auth_server.register_client("agent", jwks=signer.jwks)
    return signer


@pytest.fixture
def mcp_server(auth_server: AuthorizationServer) -> Iterator[McpTestServer]:
    with McpTestServer(auth_server) as server:
        yield server


def sent_assertions(server: AuthorizationServer) -> list[str]:
    seen: list[str] = []
    server.on_request = lambda form: seen.extend(form.get("client_assertion", []))
    return seen


async def whoami(url: str, auth: Any, calls: int = 1) -> list[str]:
    """``calls`` concurrent calls of the whoami tool over one MCP session."""
    answers: list[str] = []
    async with httpx2.AsyncClient(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:

            async def one() -> None:
                result = await client.call_tool("whoami", {})
                assert not result.is_error
                assert result.structured_content is not None
                answers.append(result.structured_content["result"])

            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(one)
    return answers


async def test_the_server_refuses_a_call_without_a_token(mcp_server: McpTestServer) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.post(mcp_server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 401
    assert "resource_metadata=" in response.headers["www-authenticate"]  # RFC 9728, for discovery
    with pytest.raises(BaseExceptionGroup) as refused:  # the SDK's task groups wrap it
        await whoami(mcp_server.url, None)
    assert refused.group_contains(MCPError)  # the SDK's word for the 401
    assert mcp_server.verifier.verified == []


async def test_sdk_provider_with_our_signer_one_token_for_many_calls(
    auth_server: AuthorizationServer, signer: InMemorySigner, mcp_server: McpTestServer
) -> None:
    assertions = sent_assertions(auth_server)
    provider = oauth_provider(
        mcp_server.url, PrivateKeyJWT("agent", signer), issuer=auth_server.issuer, scope=SCOPE
    )
    assert await whoami(mcp_server.url, provider, calls=8) == ["agent"] * 8
    assert auth_server.token_requests == 1 and signer.signatures == 1
    # The assertion, verified independently (PyJWT) with the public key the server holds.
    (assertion,) = assertions
    claims = jwt.decode(
        assertion,
        jwt.PyJWK(signer.public_jwk).key,
        algorithms=["ES256"],
        audience=auth_server.issuer,
        issuer="agent",
    )
    assert claims["sub"] == "agent" and claims["aud"] == auth_server.issuer
    assert jwt.get_unverified_header(assertion)["typ"] == "client-authentication+jwt"
    # The token was issued for this MCP server (RFC 8707 resource) and the server checked it.
    (token,) = set(mcp_server.verifier.verified)
    assert auth_server.introspect(token)["aud"] == [mcp_server.url]


async def test_sdk_provider_with_a_platform_jwt(
    auth_server: AuthorizationServer, mcp_server: McpTestServer, tmp_path: Path
) -> None:
    platform = TestIssuer()
    subject = "system:serviceaccount:agents:planner"
    auth_server.register_client("planner", federated=platform.credential(subject, auth_server.issuer))
    path = tmp_path / "token"
    path.write_text(platform.mint(subject, auth_server.issuer))
    auth = WorkloadIdentity("planner", FileAssertion(path))
    provider = oauth_provider(mcp_server.url, auth, issuer=auth_server.issuer, scope=SCOPE)
    assert await whoami(mcp_server.url, provider) == ["planner"]
    assert auth_server.federated_assertions_verified == 1 and auth_server.token_requests == 1


async def test_the_simplest_path_a_managers_httpx2_auth(
    auth_server: AuthorizationServer, signer: InMemorySigner, mcp_server: McpTestServer
) -> None:
    tokens = TokenManager(
        auth_server.token_endpoint,
        PrivateKeyJWT("agent", signer, issuer=auth_server.issuer),
        scope=SCOPE,
        resource=mcp_server.url,  # RFC 8707: the MCP server checks the token is for it
    )
    async with tokens:
        assert await whoami(mcp_server.url, tokens.auth(library="httpx2"), calls=8) == ["agent"] * 8
        assert auth_server.token_requests == 1 and signer.signatures == 1
        # The server stops taking the token: its 401 invalid_token -> one refresh, one retry.
        mcp_server.verifier.revoked.add((await tokens.get_token()).value)
        assert await whoami(mcp_server.url, tokens.auth(library="httpx2")) == ["agent"]
    assert auth_server.token_requests == 2


async def test_assertion_provider_audience_checks(signer: InMemorySigner, verifier: Any) -> None:
    provide = assertion_provider(PrivateKeyJWT("agent", signer))
    claims = verifier(await provide("https://as.example"), signer.public_jwk, audience="https://as.example")
    assert claims["iss"] == claims["sub"] == "agent"
    pinned = assertion_provider(PrivateKeyJWT("agent", signer, issuer="https://as.example"))
    with pytest.raises(ConfigurationError, match="pass the same issuer"):
        await pinned("https://elsewhere.example")
    configured = assertion_provider(PrivateKeyJWT("agent", signer, audience="https://as.example/token"))
    claims = verifier(
        await configured("https://as.example"), signer.public_jwk, audience="https://as.example/token"
    )
    assert claims["aud"] == "https://as.example/token"  # audience= you configured wins
    with pytest.raises(ConfigurationError, match="issuer identifier only"):
        assertion_provider(PrivateKeyJWT("agent", signer, audience_policy="token_endpoint"))


async def test_what_the_sdk_cannot_send_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="jwt-bearer"):
        assertion_provider(SpiffeJwtSvidAssertion(tmp_path / "svid"))
    with pytest.raises(ConfigurationError, match="PrivateKeyJWT, a WorkloadIdentity"):
        assertion_provider("a-jwt")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="client_id="):
        oauth_provider("http://127.0.0.1:1/mcp", FileAssertion(tmp_path / "t"), issuer="http://127.0.0.1:2")
    storage = MemoryTokenStorage()
    await storage.set_tokens("at_secret-token")
    assert "at_secret" not in repr(storage) and await storage.get_tokens() == "at_secret-token"
