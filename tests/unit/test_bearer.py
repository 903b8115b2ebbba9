"""The httpx auth flow over a token source (keyless_m2m/bearer.py), on asyncio and trio."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from keyless_m2m import (
    ClientSecretBasic,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.manager_rig import Api, CountingSigner, manager

pytestmark = pytest.mark.anyio


async def test_httpx_auth_sets_bearer_and_retries_once_after_invalid_token(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    api = Api(reject=1)
    async with manager(server, signer) as tokens:
        first = await tokens.get_token()
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            response = await http.post("https://api.example/v2/pockets/", json={"a": 1})
        assert response.status_code == 200
        assert api.calls == [f"Bearer {first.value}", f"Bearer {(await tokens.get_token()).value}"]
        assert api.calls[0] != api.calls[1] and server.token_requests == 2


async def test_httpx_auth_does_not_loop_and_does_not_replay_streams(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    api = Api(reject=10)
    async with manager(server, signer) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            response = await http.get("https://api.example/")
            assert response.status_code == 401 and len(api.calls) == 2  # one retry, not more

            async def body() -> Any:
                yield b"chunk"

            api.calls.clear()
            response = await http.post("https://api.example/", content=body())
            assert response.status_code == 401 and len(api.calls) == 1  # stream: not replayed


async def test_plain_401_without_invalid_token_is_returned(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api"'})

    async with manager(server, signer) as tokens:
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            assert (await http.get("https://api.example/")).status_code == 401
        assert server.token_requests == 1


def test_auth_of_the_wrong_kind_of_manager_is_a_clear_type_error(server: AuthorizationServer) -> None:
    server.register_client("basic", client_secret="s3cr3t-value")
    tokens = TokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value"))
    with httpx.Client(auth=tokens.auth(), transport=httpx.MockTransport(Api())) as http:
        with pytest.raises(TypeError, match="SyncTokenManager"):
            http.get("https://api.example/")
    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("basic", "s3cr3t-value")) as sync:
        flow = sync.auth().async_auth_flow(httpx.Request("GET", "https://api.example/"))
        with pytest.raises(TypeError, match=r"TokenManager\.auth"):
            anyio.run(flow.__anext__)
    assert server.token_requests == 0


async def test_httpx_auth_for_another_entry_asks_for_that_entry_on_every_attempt() -> None:
    from keyless_m2m.testing.endpoints import OfflineTokenEndpoint

    endpoint = OfflineTokenEndpoint()
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if len(seen) == 1:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200)

    async with TokenManager(endpoint=endpoint, scope="default") as tokens:
        auth = tokens.auth("reports.read", audience="urn:api")
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(api)) as http:
            assert (await http.get("https://api.example/")).status_code == 200
        second = await tokens.get_token("reports.read", audience="urn:api")
        # The first token, invalidated, then its replacement: both for that entry only.
        assert seen == ["Bearer offline-token-1", f"Bearer {second.value}"]
        assert second.scope == "reports.read" and second.raw["audience"] == "urn:api"
        assert endpoint.calls == 2  # the default entry was never fetched


async def test_httpx_auth_first_attempt_sets_only_the_authorization_header(
    server: AuthorizationServer, signer: CountingSigner
) -> None:
    sent: list[httpx.Headers] = []

    def api(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers)
        return httpx.Response(200)

    async with manager(server, signer) as tokens:
        token = await tokens.get_token()
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
            await http.get("https://api.example/", headers={"X-Trace": "t1"})
    assert sent[0].get_list("authorization") == [f"Bearer {token.value}"]
    assert sent[0]["x-trace"] == "t1" and "dpop" not in sent[0]
