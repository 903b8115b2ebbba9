"""The embedded ``AuthorizationServer`` driven by an independent client: Authlib.

Our own token endpoint code could share a misreading of RFC 6749 / RFC 7523 with the test
server it is tested against; Authlib's ``AsyncOAuth2Client`` (over httpx) builds its
requests and assertions by its own reading. Each test checks what the server accepts and
what it refuses (and why, through ``server.refusals``), with assertions made by Authlib's
``PrivateKeyJWT`` and secrets sent by its ``client_secret_basic`` / ``client_secret_post``.

Authlib's httpx client locks with anyio and httpx runs on anyio's backends, so these run
on asyncio and trio alike.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.cli_runner import jwk_of
from tests.helpers import ALG_KEYS, make_key, pem_of

with warnings.catch_warnings():
    # Authlib >= 1.7 prefers the httpx2 fork and warns once, at import, when it falls back
    # to httpx; importing authlib.deprecate installs an "always" filter for its warnings,
    # so ignore them only after that, and only for this import (the filters are restored).
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.oauth2.rfc7523 import ClientSecretJWT
    from authlib.oauth2.rfc7523 import PrivateKeyJWT as AuthlibPrivateKeyJWT

    try:  # the HTTP library Authlib runs on: the httpx2 fork when installed, else httpx
        from authlib.integrations.httpx_client._compat import httpx2 as authlib_http
    except ImportError:  # Authlib before the httpx2 shim
        authlib_http = httpx
from joserfc.jwk import ECKey, OKPKey, RSAKey

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "kit-secret-4f0c1a9e7b2d"  # unreserved characters only: see test_client_secret_basic


def joserfc_key(kind: str) -> Any:
    """The session's private key of this kind, as the joserfc key Authlib signs with."""
    pem = pem_of(make_key(kind))
    key_class = RSAKey if kind.startswith("rsa") else OKPKey if kind == "ed25519" else ECKey
    return key_class.import_key(pem)


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as srv:
        yield srv


@pytest.fixture
def forms(server: AuthorizationServer) -> list[dict[str, list[str]]]:
    seen: list[dict[str, list[str]]] = []
    server.on_request = seen.append
    return seen


def authlib_client(
    server: AuthorizationServer, kind: str = "p256", alg: str = "ES256", **options: Any
) -> AsyncOAuth2Client:
    """An Authlib client authenticating with private_key_jwt; ``options`` go to its PrivateKeyJWT."""
    auth_method = AuthlibPrivateKeyJWT(
        options.pop("token_endpoint", server.token_endpoint), alg=alg, **options
    )
    return AsyncOAuth2Client("svc", joserfc_key(kind), token_endpoint_auth_method=auth_method)


async def fetch(client: AsyncOAuth2Client, server: AuthorizationServer, **params: Any) -> dict[str, Any]:
    async with client:
        return dict(
            await client.fetch_token(server.token_endpoint, grant_type="client_credentials", **params)
        )


async def refused(client: AsyncOAuth2Client, server: AuthorizationServer, **params: Any) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        await fetch(client, server, **params)
    return caught.value


# -- private_key_jwt -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg",
    [
        "RS256",
        "PS256",
        "ES256",
        "ES384",
        "ES512",
        # joserfc (Authlib's JOSE library) warns that RFC 9864 deprecates the name "EdDSA";
        # it is still the name RFC 8037 and the servers we target use.
        pytest.param("EdDSA", marks=pytest.mark.filterwarnings("ignore:EdDSA is deprecated")),
    ],
)
async def test_authlib_private_key_jwt_is_accepted(
    server: AuthorizationServer, forms: list[dict[str, list[str]]], alg: str
) -> None:
    kind = ALG_KEYS[alg]
    public = jwk_of(kind, alg)
    server.register_client("svc", public_jwk=public, scopes=["pockets.read"])
    token = await fetch(authlib_client(server, kind, alg), server, scope="pockets.read")

    assert token["access_token"] == server.issued[-1]
    assert token["token_type"] == "Bearer" and token["expires_in"] == server.expires_in
    assert token["scope"] == "pockets.read"
    assert server.token_requests == 1 and server.refusals == []
    # What the server accepted is what RFC 7523 describes, checked by a third library.
    (form,) = forms
    assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    verified = jwt.PyJWK.from_dict(public, algorithm=alg)
    claims = jwt.decode(
        form["client_assertion"][0], verified.key, algorithms=[alg], audience=server.token_endpoint
    )
    assert claims["iss"] == claims["sub"] == "svc" and claims["jti"]


async def test_aud_may_be_the_issuer_but_not_another_url(server: AuthorizationServer) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    assert await fetch(authlib_client(server, token_endpoint=server.issuer), server)

    elsewhere = authlib_client(server, token_endpoint="https://other.example/oauth2/token")
    error = await refused(elsewhere, server)
    assert error.error == "invalid_client"
    expected = f"aud must be the token endpoint {server.token_endpoint} or the issuer {server.issuer}"
    assert server.refusals == [f"invalid_client: {expected}"]
    assert len(server.issued) == 1


async def test_replayed_jti_is_refused(server: AuthorizationServer) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    same_jti = {"jti": "one-jti-for-two-assertions"}  # Authlib keeps a jti given in claims
    assert await fetch(authlib_client(server, claims=dict(same_jti)), server)
    error = await refused(authlib_client(server, claims=dict(same_jti)), server)
    assert error.error == "invalid_client"
    assert server.refusals == ["invalid_client: jti has been used before (a replayed assertion)"]
    assert await fetch(authlib_client(server), server)  # a fresh jti is fine again
    assert len(server.issued) == 2


async def test_a_captured_assertion_cannot_be_replayed(
    server: AuthorizationServer, forms: list[dict[str, list[str]]]
) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    assert await fetch(authlib_client(server), server)
    form = {name: values[0] for name, values in forms[0].items()}
    async with httpx.AsyncClient() as http:
        replay = await http.post(server.token_endpoint, data=form)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    assert "replayed" in replay.json()["error_description"]
    assert len(server.issued) == 1


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -60}, "invalid_client: the client assertion has expired (exp)"),
        ({"iat": 600, "exp": 900}, "invalid_client: iat is not a number or is in the future"),
        ({"nbf": 600}, "invalid_client: nbf is not a number or is in the future"),
        ({"exp": "tomorrow"}, "invalid_client: exp is missing or not a number"),
        ({"sub": "someone-else"}, "invalid_client: sub must equal iss"),
    ],
    ids=["expired", "iat-in-future", "nbf-in-future", "exp-not-a-number", "sub-is-not-iss"],
)
async def test_bad_claims_are_refused(
    server: AuthorizationServer, claims: dict[str, Any], reason: str
) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    now = int(time.time())
    # Times are offsets from now; Authlib's claims override the ones it sets itself.
    overrides = {name: now + value if isinstance(value, int) else value for name, value in claims.items()}
    error = await refused(authlib_client(server, claims=overrides), server)
    assert error.error == "invalid_client"
    assert server.refusals == [reason]
    assert server.issued == []


async def test_within_leeway_is_accepted(server: AuthorizationServer) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    now = int(time.time())
    skewed = {"iat": now + 2, "nbf": now + 2, "exp": now + 62}  # a client clock 2 s ahead
    assert await fetch(authlib_client(server, claims=skewed), server)
    server.leeway = 0
    error = await refused(authlib_client(server, claims={**skewed, "iat": now + 30}), server)
    assert "iat" in str(error.description)


async def test_an_unregistered_key_is_refused(server: AuthorizationServer) -> None:
    registered = jwk_of("rsa", "RS256")
    server.register_client("svc", public_jwk=registered)
    error = await refused(authlib_client(server, "rsa-b", "RS256"), server)
    assert error.error == "invalid_client"
    (reason,) = server.refusals
    assert reason.startswith(
        "invalid_client: the signature does not verify with client 'svc''s registered keys"
    )
    assert registered["kid"] in reason  # names the kid it has, so a test failure says which


async def test_the_registered_alg_is_enforced(server: AuthorizationServer) -> None:
    server.register_client("svc", public_jwk=jwk_of("rsa", "RS256"))
    error = await refused(authlib_client(server, "rsa", "PS256"), server)  # right key, other alg
    assert error.error == "invalid_client"
    assert server.refusals == ["invalid_client: client 'svc''s keys are registered for RS256, not PS256"]


async def test_symmetric_algs_are_refused(server: AuthorizationServer) -> None:
    # client_secret_jwt (HS256 keyed with the secret) is not private_key_jwt: a server
    # must not verify an HMAC with key material it publishes or registers as public.
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"), client_secret=SECRET)
    client = AsyncOAuth2Client(
        "svc", SECRET, token_endpoint_auth_method=ClientSecretJWT(server.token_endpoint, alg="HS256")
    )
    error = await refused(client, server)
    assert error.error == "invalid_client"
    assert server.refusals == ["invalid_client: alg 'HS256' is not an asymmetric JWS algorithm"]


async def test_an_unknown_client_is_refused(server: AuthorizationServer) -> None:
    error = await refused(authlib_client(server), server)
    assert error.error == "invalid_client"
    assert server.refusals == ["invalid_client: iss 'svc' is not a registered client"]


# -- client secrets --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_secret_basic_and_post(
    server: AuthorizationServer, forms: list[dict[str, list[str]]], method: str
) -> None:
    # Authlib does not form-encode the id and secret in the Basic header (RFC 6749 section
    # 2.3.1 asks for it); the server decodes them as the RFC says, so a secret with '+' or
    # '%' would differ between the two. This secret has no such characters.
    server.register_client("svc", client_secret=SECRET, scopes=["pockets.read", "transfers.read"])
    client = AsyncOAuth2Client("svc", SECRET, token_endpoint_auth_method=method)
    token = await fetch(client, server, scope="transfers.read pockets.read")
    assert token["access_token"] == server.issued[-1]
    assert token["scope"] == "pockets.read transfers.read"
    sent_in_body = "client_secret" in forms[-1]
    assert sent_in_body is (method == "client_secret_post")

    wrong = AsyncOAuth2Client("svc", "not-" + SECRET, token_endpoint_auth_method=method)
    error = await refused(wrong, server)
    assert error.error == "invalid_client"
    assert server.refusals[-1] == "invalid_client: wrong client secret for client 'svc'"

    error = await refused(
        AsyncOAuth2Client("svc", SECRET, token_endpoint_auth_method=method), server, scope="admin"
    )
    assert error.error == "invalid_scope"
    assert server.refusals[-1] == "invalid_scope: client 'svc' may not request: admin"
    for refusal in server.refusals:
        assert SECRET not in refusal
    assert len(server.issued) == 1


async def test_a_client_without_a_secret_cannot_use_one(server: AuthorizationServer) -> None:
    server.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
    error = await refused(
        AsyncOAuth2Client("svc", SECRET, token_endpoint_auth_method="client_secret_post"), server
    )
    assert error.error == "invalid_client"
    assert server.refusals == ["invalid_client: client 'svc' has no client secret registered"]


# -- faults, as Authlib sees them ------------------------------------------------------------


async def test_faults_reach_an_independent_client(server: AuthorizationServer) -> None:
    server.register_client("svc", client_secret=SECRET)
    responses: list[Any] = []  # authlib_http.Response

    def client() -> AsyncOAuth2Client:
        c = AsyncOAuth2Client("svc", SECRET, token_endpoint_auth_method="client_secret_post")

        def keep(response: Any) -> Any:
            responses.append(response)
            return response

        c.register_compliance_hook("access_token_response", keep)
        return c

    server.fail_next(
        Fault(status=429, body={"error": "slow_down"}, headers={"Retry-After": "7"}),
        Fault(status=503, body=b"upstream down", count=2),
        Fault(status=200, body=b"<html>not json</html>", headers={"Content-Type": "text/html"}),
    )
    error = await refused(client(), server)
    assert error.error == "slow_down"
    assert responses[-1].status_code == 429 and responses[-1].headers["Retry-After"] == "7"
    for _ in range(2):
        with pytest.raises(authlib_http.HTTPStatusError):
            await fetch(client(), server)
        assert responses[-1].status_code == 503 and responses[-1].text == "upstream down"
    with pytest.raises(ValueError, match="not a JSON object"):
        await fetch(client(), server)
    assert responses[-1].headers["Content-Type"] == "text/html"

    assert (await fetch(client(), server))["access_token"] == server.issued[0]  # the queue is empty
    assert server.token_requests == 5 and len(server.issued) == 1


async def test_latency_is_injected(server: AuthorizationServer) -> None:
    server.register_client("svc", client_secret=SECRET)
    server.latency = 1.0
    slow = AsyncOAuth2Client(
        "svc",
        SECRET,
        token_endpoint_auth_method="client_secret_post",
        timeout=authlib_http.Timeout(5.0, read=0.2),
    )
    with pytest.raises(authlib_http.ReadTimeout):
        await fetch(slow, server)
    assert server.token_requests == 1
