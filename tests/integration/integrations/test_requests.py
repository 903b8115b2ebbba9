"""keyless_m2m.integrations.requests against real servers on loopback: a real
``requests.Session`` over sockets, the embedded authorization server counting token
requests, a Bearer resource server refusing the tokens it is told to, and the DPoP
resource server verifying every proof with PyJWT. Counts, never times."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    KeylessM2MError,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.integrations.requests import BearerAuth
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.bearer_resource_server import BearerResourceServer
from tests.dpop_resource_server import DPoPResourceServer
from tests.echo_server import EchoServer
from tests.frame_locals import secret_locals
from tests.helpers import exception_texts
from tests.missing_extras import import_without
from tests.processes import run_python
from tests.threads import at_once

pytestmark = pytest.mark.integration


@pytest.fixture
def tokens(server: AuthorizationServer, client_auth: ClientSecretBasic) -> Iterator[SyncTokenManager]:
    with SyncTokenManager(server.token_endpoint, client_auth, scope="pockets.read") as manager:
        yield manager


def test_one_session_many_threads_one_token_request(
    tokens: SyncTokenManager, server: AuthorizationServer, api: BearerResourceServer
) -> None:
    with requests.Session() as session:
        session.auth = BearerAuth(tokens)
        statuses, errors = at_once(
            lambda n: session.get(f"{api.url}/pockets/{n}", timeout=10).status_code, 16
        )
    assert not errors and statuses == [200] * 16
    assert server.token_requests == 1
    assert set(api.authorizations()) == {f"Bearer {server.issued[0]}"} and len(api.records) == 16


def test_invalid_token_invalidates_and_replays_once_with_the_same_body(
    tokens: SyncTokenManager, server: AuthorizationServer, api: BearerResourceServer
) -> None:
    api.reject = 1
    with requests.Session() as session:
        response = session.post(
            f"{api.url}/transfers", json={"amount": 7}, auth=BearerAuth(tokens), timeout=10
        )
    assert response.status_code == 200
    first, second = server.issued
    assert api.authorizations() == [f"Bearer {first}", f"Bearer {second}"]
    assert [json.loads(r.body) for r in api.records] == [{"amount": 7}, {"amount": 7}]
    assert server.token_requests == 2 and tokens.stats.refreshes == 2
    # The 401 is in the history, with the request it answered (the first token).
    (refused,) = response.history
    assert refused.status_code == 401 and refused.request.headers["Authorization"] == f"Bearer {first}"
    assert response.request.headers["Authorization"] == f"Bearer {second}"


def test_invalid_token_is_replayed_once_not_twice(
    tokens: SyncTokenManager, server: AuthorizationServer, api: BearerResourceServer
) -> None:
    api.reject_all = True
    with requests.Session() as session:
        session.auth = BearerAuth(tokens)
        response = session.get(f"{api.url}/pockets", timeout=10)
        assert response.status_code == 401 and len(api.records) == 2
        # The next call: the refused token was just invalidated, and the manager's floor
        # (min_invalidation_interval) keeps it from refreshing again at once: one more try.
        assert session.get(f"{api.url}/pockets", timeout=10).status_code == 401
    assert len(api.records) == 4 and server.token_requests == 2


def test_a_body_that_cannot_be_sent_again_is_not_replayed(
    tokens: SyncTokenManager, server: AuthorizationServer, api: BearerResourceServer
) -> None:
    api.reject = 1

    def chunks() -> Iterator[bytes]:
        yield b"one,"
        yield b"two"

    with requests.Session() as session:
        response = session.post(f"{api.url}/upload", data=chunks(), auth=BearerAuth(tokens), timeout=10)
    assert response.status_code == 401 and not response.history
    assert [r.body for r in api.records] == [b"one,two"]
    assert server.token_requests == 1 and tokens.stats.refreshes == 1


def test_copies_of_a_prepared_request_do_not_collect_the_hooks_of_others(
    tokens: SyncTokenManager, api: BearerResourceServer
) -> None:
    # PreparedRequest.copy() shares the hook lists: registering on them made every later
    # copy run the hook of every earlier request (found by benchmarks/integrations.py).
    auth = BearerAuth(tokens)
    template = requests.Request("GET", f"{api.url}/pockets").prepare()
    prepared = [auth(template.copy()) for _ in range(3)]
    assert template.hooks["response"] == []
    assert [len(p.hooks["response"]) for p in prepared] == [1, 1, 1]
    with requests.Session() as session:
        assert session.send(prepared[2], timeout=10).status_code == 200


def test_dpop_a_proof_per_request_and_one_nonce_replay(
    dpop_server: AuthorizationServer, client_auth: ClientSecretBasic
) -> None:
    with SyncTokenManager(dpop_server.token_endpoint, client_auth, dpop=True) as tokens:
        with DPoPResourceServer(jkt_of=dpop_server.jkt_of, require_nonce=True) as api:
            with requests.Session() as session:
                session.auth = BearerAuth(tokens)
                first = session.get(f"{api.url}/pockets?page=2", timeout=10)
                second = session.post(f"{api.url}/transfers", json={"amount": 1}, timeout=10)
            assert first.status_code == 200 and second.status_code == 200, api.records
            assert first.json()["scheme"] == "DPoP"
            # The API's nonce: demanded once, answered at once, then sent unasked; every
            # proof verified by PyJWT (htm, htu, ath, jti, the key bound to the token).
            assert api.outcomes() == ["use_dpop_nonce", "ok", "ok"]
            assert api.proofs_verified == 2 and api.replays_refused == 0
        assert tokens.stats.requests == 2  # the token's own nonce round; the API's cost none
        assert tokens.stats.dpop_proofs == 2 + 3


def test_a_token_fetch_failure_is_typed_and_keeps_the_secret() -> None:
    canary = "requests-canary-" + "Zq9xT4mW2vLp8sRk"
    with EchoServer() as echo:
        # The endpoint echoes the secret it received into its error_description.
        with SyncTokenManager(echo.url("description", "secret"), ClientSecretPost("c", canary)) as tokens:
            with requests.Session() as session:
                session.auth = BearerAuth(tokens)
                with pytest.raises(KeylessM2MError) as info:
                    session.get(f"{echo.origin}/api", timeout=10)
                texts = [*exception_texts(info.value), repr(session.auth)]
        forbidden = echo.forbidden() | {canary}
    assert not info.value.retryable
    assert not [value for value in forbidden for text in texts if value in text]
    assert secret_locals(info.value, forbidden) == []  # what an error tracker records


def test_an_async_source_is_refused(server: AuthorizationServer, client_auth: ClientSecretBasic) -> None:
    with pytest.raises(TypeError, match="SyncTokenSource"):
        BearerAuth(TokenManager(server.token_endpoint, client_auth))  # type: ignore[arg-type]
    assert server.token_requests == 0


def test_the_library_loads_neither_requests_nor_aiohttp() -> None:
    code = (
        "import sys, keyless_m2m, keyless_m2m.integrations, keyless_m2m.integrations.httpx; "
        "assert 'requests' not in sys.modules and 'aiohttp' not in sys.modules, sorted(sys.modules)"
    )
    run_python(code)


def test_without_requests_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    error = import_without(monkeypatch, "requests", "keyless_m2m.integrations.requests")
    assert error.extra == "requests" and isinstance(error, ImportError)
    assert "pip install 'keyless-m2m[requests]'" in str(error)
