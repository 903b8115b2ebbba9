"""The embedded ``AuthorizationServer``'s grant policy (issue 20, point 9): a server may
grant less than was asked (RFC 6749 section 3.3), after authenticating the client, and
says so in the token response's ``scope``; what the library does with such a token."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from keyless_m2m import ClientSecretPost, InvalidClientError, TokenManager
from keyless_m2m.testing.authorization_server import AuthorizationServer

pytestmark = pytest.mark.anyio

SECRET = "grant-policy-secret"


def _form(scope: str | None, secret: str = SECRET) -> dict[str, list[str]]:
    form = {"grant_type": ["client_credentials"], "client_id": ["svc"], "client_secret": [secret]}
    if scope is not None:
        form["scope"] = [scope]
    return form


def test_a_client_grant_policy_narrows_the_scope_after_authentication() -> None:
    seen: list[tuple[str, frozenset[str]]] = []

    def read_only(client_id: str, requested: frozenset[str]) -> Iterable[str]:
        seen.append((client_id, requested))
        return {s for s in requested if s.endswith(".read")}

    with AuthorizationServer() as server:
        server.register_client("svc", client_secret=SECRET, grant=read_only)
        status, body = server.handle_token_request(_form("pockets.write pockets.read"), None)
        assert status == 200 and body["scope"] == "pockets.read"
        assert seen == [("svc", frozenset({"pockets.read", "pockets.write"}))]
        # nothing granted is said too: an absent scope would mean "as requested"
        status, body = server.handle_token_request(_form("pockets.write"), None)
        assert status == 200 and body["scope"] == ""
        # authentication comes first: a wrong secret is refused, the policy never asked
        status, body = server.handle_token_request(_form("pockets.read", secret="wrong"), None)
        assert status == 401 and body["error"] == "invalid_client" and len(seen) == 2


def test_a_fixed_grant_and_a_server_wide_policy() -> None:
    with AuthorizationServer(grant=lambda client_id, requested: requested - {"admin"}) as server:
        server.register_client("svc", client_secret=SECRET)  # the server's policy
        server.register_client("ro", client_secret=SECRET, grant=["pockets.read"])  # its own: a cap
        assert server.handle_token_request(_form("admin pockets.read"), None)[1]["scope"] == "pockets.read"
        ro = {**_form("pockets.read pockets.write"), "client_id": ["ro"]}
        assert server.handle_token_request(ro, None)[1]["scope"] == "pockets.read"
        # without a scope requested, none is granted or said, as before
        assert "scope" not in server.handle_token_request(_form(None), None)[1]


async def test_the_token_says_the_narrower_grant_and_is_cached_under_the_requested_scope() -> None:
    with AuthorizationServer() as server:
        server.register_client("svc", client_secret=SECRET, grant=["pockets.read"])
        auth = ClientSecretPost("svc", SECRET)
        async with TokenManager(server.token_endpoint, auth, scope="pockets.read pockets.write") as tokens:
            token = await tokens.get_token()
            assert token.scope == "pockets.read" and token.scopes == frozenset({"pockets.read"})
            # the manager's cache key is what was asked, not what was granted: asking again
            # is served from the cache, without a second request
            assert await tokens.get_token() is token
            assert await tokens.get_token("pockets.write pockets.read") is token
            assert server.token_requests == 1
            # asking for exactly the granted scope is another entry, another request
            narrower = await tokens.get_token("pockets.read")
            assert narrower is not token and narrower.scope == "pockets.read"
            assert server.token_requests == 2


async def test_a_refused_client_is_still_refused_with_a_policy() -> None:
    with AuthorizationServer(grant=lambda client_id, requested: requested) as server:
        server.register_client("svc", client_secret=SECRET)
        async with TokenManager(
            server.token_endpoint, ClientSecretPost("svc", "not-the-secret"), scope="pockets.read"
        ) as tokens:
            with pytest.raises(InvalidClientError):
                await tokens.get_token()


def test_introspect_tells_what_a_token_is_for() -> None:
    with AuthorizationServer(expires_in=60, grant=["pockets.read"]) as server:
        server.register_client("svc", client_secret=SECRET)
        form = {**_form("pockets.read pockets.write"), "resource": ["https://api.example/"]}
        status, body = server.handle_token_request(form, None)
        assert status == 200
        facts = server.introspect(body["access_token"])
        assert facts.pop("exp") > 0
        assert facts == {
            "active": True,
            "client_id": "svc",
            "scope": "pockets.read",  # what was granted, not what was asked
            "token_type": "Bearer",
            "iss": server.issuer,
            "aud": ["https://api.example/"],
        }
        assert "aud" not in server.introspect(
            server.handle_token_request(_form(None), None)[1]["access_token"]
        )
        assert server.introspect("at_never-issued") == {"active": False}
    with AuthorizationServer(expires_in=0) as expired:
        expired.register_client("svc", client_secret=SECRET)
        token = expired.handle_token_request(_form(None), None)[1]["access_token"]
        assert expired.introspect(token) == {"active": False}


def test_extra_metadata_adds_members_to_the_metadata_document() -> None:
    with AuthorizationServer() as server:
        server.extra_metadata = {"authorization_endpoint": server.issuer + "/authorize"}
        metadata = server.metadata()
        assert metadata["authorization_endpoint"] == server.issuer + "/authorize"
        assert metadata["token_endpoint"] == server.token_endpoint


def test_the_servers_queue_a_fleet_of_connections(tmp_path: Path) -> None:
    """The listen backlog holds twenty managers connecting at once. With the default of
    ``ThreadingHTTPServer`` (5), a busy machine overflowed it: the connections beyond it
    failed and were retried (the fleet test in tests/integration/test_cold_start.py saw
    22-26 signatures for 20 token requests under two CPU-bound processes)."""
    from keyless_m2m.testing.mtls_server import MutualTlsAuthorizationServer
    from keyless_m2m.testing.tls import TestAuthority

    with AuthorizationServer() as plain, MutualTlsAuthorizationServer(TestAuthority(str(tmp_path))) as mtls:
        for server in (plain, mtls):
            assert server._httpd.request_queue_size >= 128
