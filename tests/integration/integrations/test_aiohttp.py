"""keyless_m2m.integrations.aiohttp against real servers on loopback: a real
``aiohttp.ClientSession`` over sockets with the middleware, the embedded authorization
server counting token requests, a Bearer resource server refusing the tokens it is told
to, and the DPoP resource server verifying every proof with PyJWT. aiohttp runs on
asyncio only, so these tests do. Counts, never times."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    KeylessM2MError,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.integrations.aiohttp import BearerMiddleware
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.bearer_resource_server import BearerResourceServer
from tests.dpop_resource_server import DPoPResourceServer
from tests.echo_server import EchoServer
from tests.frame_locals import secret_locals
from tests.helpers import exception_texts
from tests.missing_extras import import_without

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> Any:
    return "asyncio"  # aiohttp is asyncio-only


async def test_many_concurrent_requests_one_token_request(
    server: AuthorizationServer, client_auth: ClientSecretBasic, api: BearerResourceServer
) -> None:
    statuses: list[int] = []
    async with TokenManager(server.token_endpoint, client_auth, scope="pockets.read") as tokens:
        async with aiohttp.ClientSession(middlewares=(BearerMiddleware(tokens),)) as session:

            async def call(n: int) -> None:
                async with session.get(f"{api.url}/pockets/{n}") as response:
                    statuses.append(response.status)

            async with anyio.create_task_group() as group:
                for n in range(16):
                    group.start_soon(call, n)
    assert statuses == [200] * 16
    assert server.token_requests == 1 and tokens.stats.waits == 16  # all 16 waited on one flight
    assert set(api.authorizations()) == {f"Bearer {server.issued[0]}"} and len(api.records) == 16


async def test_invalid_token_invalidates_and_replays_once_with_the_same_body(
    server: AuthorizationServer, client_auth: ClientSecretBasic, api: BearerResourceServer
) -> None:
    api.reject = 1
    async with TokenManager(server.token_endpoint, client_auth) as tokens:
        async with aiohttp.ClientSession(middlewares=(BearerMiddleware(tokens),)) as session:
            async with session.post(f"{api.url}/transfers", json={"amount": 7}) as response:
                assert response.status == 200 and (await response.json())["ok"]
        assert tokens.stats.refreshes == 2
    first, second = server.issued
    assert api.authorizations() == [f"Bearer {first}", f"Bearer {second}"]
    assert [json.loads(r.body) for r in api.records] == [{"amount": 7}, {"amount": 7}]
    assert server.token_requests == 2


async def test_invalid_token_is_replayed_once_not_twice(
    server: AuthorizationServer, client_auth: ClientSecretBasic, api: BearerResourceServer
) -> None:
    api.reject_all = True
    async with TokenManager(server.token_endpoint, client_auth) as tokens:
        bearer = BearerMiddleware(tokens)
        async with aiohttp.ClientSession() as session:  # the middleware for one request
            async with session.get(f"{api.url}/pockets", middlewares=(bearer,)) as response:
                assert response.status == 401
            assert len(api.records) == 2
            async with session.get(f"{api.url}/pockets", middlewares=(bearer,)) as response:
                assert response.status == 401
    # The second call: min_invalidation_interval keeps the just-refreshed token, one replay.
    assert len(api.records) == 4 and server.token_requests == 2


async def test_a_streamed_body_is_not_replayed(
    server: AuthorizationServer, client_auth: ClientSecretBasic, api: BearerResourceServer
) -> None:
    api.reject = 1

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one,"
        yield b"two"

    async with TokenManager(server.token_endpoint, client_auth) as tokens:
        async with aiohttp.ClientSession(middlewares=(BearerMiddleware(tokens),)) as session:
            async with session.post(f"{api.url}/upload", data=chunks()) as response:
                assert response.status == 401
        assert tokens.stats.refreshes == 1
    assert [r.body for r in api.records] == [b"one,two"] and server.token_requests == 1


async def test_dpop_a_proof_per_request_and_one_nonce_replay(
    dpop_server: AuthorizationServer, client_auth: ClientSecretBasic
) -> None:
    async with TokenManager(dpop_server.token_endpoint, client_auth, dpop=True) as tokens:
        with DPoPResourceServer(jkt_of=dpop_server.jkt_of, require_nonce=True) as api:
            async with aiohttp.ClientSession(middlewares=(BearerMiddleware(tokens),)) as session:
                async with session.get(f"{api.url}/pockets?page=2") as first:
                    assert first.status == 200, api.records
                    assert (await first.json())["scheme"] == "DPoP"
                async with session.post(f"{api.url}/transfers", json={"amount": 1}) as second:
                    assert second.status == 200, api.records
            # Every proof verified by PyJWT (htm, htu, ath, jti, the key bound to the token).
            assert api.outcomes() == ["use_dpop_nonce", "ok", "ok"]
            assert api.proofs_verified == 2 and api.replays_refused == 0
        assert tokens.stats.requests == 2 and tokens.stats.dpop_proofs == 2 + 3


async def test_a_token_fetch_failure_is_typed_and_keeps_the_secret() -> None:
    canary = "aiohttp-canary-" + "Hq3wP9vX6mTz2nLc"
    with EchoServer() as echo:
        # The endpoint echoes the secret it received into its error_description.
        async with TokenManager(echo.url("description", "secret"), ClientSecretPost("c", canary)) as tokens:
            bearer = BearerMiddleware(tokens)
            async with aiohttp.ClientSession(middlewares=(bearer,)) as session:
                with pytest.raises(KeylessM2MError) as info:
                    await session.get(f"{echo.origin}/api")
            texts = [*exception_texts(info.value), repr(bearer)]
        forbidden = echo.forbidden() | {canary}
    assert not info.value.retryable
    assert not [value for value in forbidden for text in texts if value in text]
    assert secret_locals(info.value, forbidden) == []  # what an error tracker records


def test_a_blocking_source_is_refused(server: AuthorizationServer, client_auth: ClientSecretBasic) -> None:
    with SyncTokenManager(server.token_endpoint, client_auth) as tokens:
        with pytest.raises(TypeError, match="TokenSource"):
            BearerMiddleware(tokens)  # type: ignore[arg-type]
    assert server.token_requests == 0


def test_without_aiohttp_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    error = import_without(monkeypatch, "aiohttp", "keyless_m2m.integrations.aiohttp")
    assert error.extra == "aiohttp" and isinstance(error, ImportError)
    assert "pip install 'keyless-m2m[aiohttp]'" in str(error)
