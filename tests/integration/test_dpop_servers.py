"""The DPoP (RFC 9449) servers the client is tested against, driven with proofs made here
with PyJWT and ``cryptography``: the embedded ``AuthorizationServer`` (``dpop=``,
``dpop_nonce=``), the loopback resource server (``tests/dpop_resource_server.py``) and
oidc-provider's ``dpop`` configuration. None of this uses the library's DPoP client, so a
bug in it cannot make these servers look right."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.dpop_resource_server import DPoPResourceServer, b64url, thumbprint
from tests.helpers import make_key
from tests.oidc_provider.clients import DPOP_CLIENTS, SECRET, AuthServer, ProviderPool

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

P256 = ec.generate_private_key(ec.SECP256R1())
OTHER_P256 = ec.generate_private_key(ec.SECP256R1())
ED25519 = ed25519.Ed25519PrivateKey.generate()
CLIENT_SECRET = "dpop-test-secret-5d0c"


def public_jwk(key: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(public, as_dict=True))
    if isinstance(public, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(public, as_dict=True))
    return dict(OKPAlgorithm.to_jwk(public, as_dict=True))


def proof(
    htu: str,
    *,
    htm: str = "POST",
    key: Any = P256,
    alg: str = "ES256",
    token: str | None = None,
    nonce: str | None = None,
    header: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    """A DPoP proof JWT (RFC 9449 section 4.2); ``header``/``claims`` override, ``drop``
    removes claims."""
    payload: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": int(time.time())}
    if token is not None:
        payload["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    if nonce is not None:
        payload["nonce"] = nonce
    payload.update(claims)
    for name in drop:
        payload.pop(name)
    headers = {"typ": "dpop+jwt", "jwk": public_jwk(key), **(header or {})}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


FORM = {"grant_type": "client_credentials", "scope": "pockets.read"}


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer(dpop="optional") as s:
        s.register_client("svc", client_secret=CLIENT_SECRET)
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def token_request(
    http: httpx.AsyncClient, server: AuthorizationServer, *proofs: str, client_id: str = "svc"
) -> httpx.Response:
    headers = [("DPoP", p) for p in proofs]
    return await http.post(server.token_endpoint, data=FORM, auth=(client_id, CLIENT_SECRET), headers=headers)


def refused(response: httpx.Response, error: str, reason: str = "") -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == error, body
    assert reason in body.get("error_description", ""), body


# -- the embedded authorization server --------------------------------------------------------


@pytest.mark.parametrize(("key", "alg"), [(P256, "ES256"), (ED25519, "EdDSA"), (make_key("rsa"), "PS256")])
async def test_a_valid_proof_gets_a_bound_dpop_token(
    server: AuthorizationServer, http: httpx.AsyncClient, key: Any, alg: str
) -> None:
    response = await token_request(http, server, proof(server.token_endpoint, key=key, alg=alg))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert server.dpop_bindings == {body["access_token"]: thumbprint(public_jwk(key))}
    assert server.jkt_of(body["access_token"]) == thumbprint(public_jwk(key))
    assert server.dpop_proofs_verified == 1 and "DPoP-Nonce" not in response.headers
    assert server.metadata()["dpop_signing_alg_values_supported"]


async def test_optional_without_a_proof_is_bearer_and_required_refuses_it(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    response = await token_request(http, server)
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"
    assert server.dpop_bindings == {} and server.jkt_of(response.json()["access_token"]) is None
    server.dpop = "required"
    refused(await token_request(http, server), "invalid_dpop_proof", "a DPoP proof is required")


async def test_off_ignores_the_header(http: httpx.AsyncClient) -> None:
    with AuthorizationServer() as plain:
        plain.register_client("svc", client_secret=CLIENT_SECRET)
        response = await token_request(http, plain, "not even a JWS")
        assert response.status_code == 200 and response.json()["token_type"] == "Bearer"
        assert "dpop_signing_alg_values_supported" not in plain.metadata()


def _bad_proofs(endpoint: str) -> list[tuple[str, list[str], str]]:
    signed_by_other = proof(endpoint, header={"jwk": public_jwk(OTHER_P256)})
    private = {**public_jwk(P256), "d": b64url(P256.private_numbers().private_value.to_bytes(32, "big"))}
    hmac_proof = jwt.encode(
        {"jti": "x", "htm": "POST", "htu": endpoint, "iat": int(time.time())},
        "a-shared-secret-of-at-least-32-bytes!",
        algorithm="HS256",
        headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
    )
    none_proof = jwt.encode(
        {"jti": "y", "htm": "POST", "htu": endpoint, "iat": int(time.time())},
        "",
        algorithm="none",
        headers={"typ": "dpop+jwt", "jwk": public_jwk(P256)},
    )
    return [
        ("not-a-jws", ["a.b"], "not a compact JWS"),
        ("two-headers", [proof(endpoint), proof(endpoint)], "more than one DPoP header"),
        ("typ-jwt", [proof(endpoint, header={"typ": "JWT"})], "typ must be 'dpop+jwt'"),
        ("alg-hs256", [hmac_proof], "not an asymmetric"),
        ("alg-none", [none_proof], "not an asymmetric"),
        ("no-jwk", [proof(endpoint, header={"jwk": None})], "no jwk"),
        ("private-jwk", [proof(endpoint, header={"jwk": private})], "private key members"),
        ("wrong-key", [signed_by_other], "signature does not verify"),
        ("htm-get", [proof(endpoint, htm="GET")], "htm must be 'POST'"),
        ("htu-other-path", [proof(endpoint + "/other")], "htu must be the token endpoint"),
        ("htu-other-port", [proof("http://127.0.0.1:1/token")], "htu must be the token endpoint"),
        ("iat-old", [proof(endpoint, iat=int(time.time()) - 300)], "iat is missing or more than"),
        ("iat-future", [proof(endpoint, iat=int(time.time()) + 300)], "iat is missing or more than"),
        ("no-iat", [proof(endpoint, drop=("iat",))], "iat is missing"),
        ("no-jti", [proof(endpoint, drop=("jti",))], "jti is missing"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _bad_proofs("http://127.0.0.1:1/token")])
async def test_each_bad_proof_is_refused(
    server: AuthorizationServer, http: httpx.AsyncClient, case: str
) -> None:
    _, proofs, reason = next(c for c in _bad_proofs(server.token_endpoint) if c[0] == case)
    refused(await token_request(http, server, *proofs), "invalid_dpop_proof", reason)
    assert server.issued == [] and server.dpop_proofs_verified == 0
    assert server.refusals[-1].startswith("invalid_dpop_proof: ")


async def test_htu_query_and_fragment_are_ignored(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    response = await token_request(http, server, proof(server.token_endpoint + "?a=1#f"))
    assert response.status_code == 200 and response.json()["token_type"] == "DPoP"


async def test_a_replayed_proof_is_refused(server: AuthorizationServer, http: httpx.AsyncClient) -> None:
    once = proof(server.token_endpoint)
    assert (await token_request(http, server, once)).status_code == 200
    refused(await token_request(http, server, once), "invalid_dpop_proof", "replayed DPoP proof")
    assert server.dpop_replays_refused == 1 and len(server.issued) == 1


async def test_client_authentication_comes_first(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    response = await token_request(http, server, "a.b", client_id="stranger")
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_the_nonce_is_demanded_then_accepted_and_rotates(http: httpx.AsyncClient) -> None:
    with AuthorizationServer(dpop="required", dpop_nonce=True) as server:
        server.register_client("svc", client_secret=CLIENT_SECRET)
        first = await token_request(http, server, proof(server.token_endpoint))
        refused(first, "use_dpop_nonce")
        nonce = first.headers["DPoP-Nonce"]
        assert nonce == server.dpop_nonce_value and server.dpop_nonces_demanded == 1
        second = await token_request(http, server, proof(server.token_endpoint, nonce=nonce))
        assert second.status_code == 200 and second.json()["token_type"] == "DPoP"
        assert second.headers["DPoP-Nonce"] == nonce
        fresh = server.rotate_dpop_nonce()
        stale = await token_request(http, server, proof(server.token_endpoint, nonce=nonce))
        refused(stale, "use_dpop_nonce", "not the current nonce")
        assert stale.headers["DPoP-Nonce"] == fresh != nonce
        assert (
            await token_request(http, server, proof(server.token_endpoint, nonce=fresh))
        ).status_code == 200
        assert server.dpop_nonces_demanded == 2 and server.dpop_proofs_verified == 2


async def test_the_iat_window_follows_the_servers_clock(http: httpx.AsyncClient) -> None:
    with AuthorizationServer(dpop="required", dpop_iat_window=10) as server:
        server.register_client("svc", client_secret=CLIENT_SECRET)
        server.clock_offset, server.checks_use_clock_offset = 120, True
        refused(await token_request(http, server, proof(server.token_endpoint)), "invalid_dpop_proof", "10 s")
        ahead = proof(server.token_endpoint, iat=int(time.time()) + 120)
        assert (await token_request(http, server, ahead)).status_code == 200


# -- the resource server --------------------------------------------------------------------


async def dpop_token(http: httpx.AsyncClient, server: AuthorizationServer, key: Any = P256) -> str:
    alg = "EdDSA" if key is ED25519 else "ES256"
    response = await token_request(http, server, proof(server.token_endpoint, key=key, alg=alg))
    assert response.status_code == 200 and response.json()["token_type"] == "DPoP"
    return str(response.json()["access_token"])


async def call(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    dpop: str | None,
    *,
    method: str = "GET",
    scheme: str = "DPoP",
) -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if dpop is not None:
        headers["DPoP"] = dpop
    return await http.request(method, url, headers=headers)


def challenge(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    value = response.headers["WWW-Authenticate"]
    assert value.startswith("DPoP ")
    return value


async def test_the_resource_server_accepts_a_bound_token_with_its_proof(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    token = await dpop_token(http, server, ED25519)
    with DPoPResourceServer(jkt_of=server.jkt_of) as rs:
        url = rs.url + "/pockets"
        response = await call(
            http, url + "?page=2", token, proof(url, htm="GET", key=ED25519, alg="EdDSA", token=token)
        )
        assert response.status_code == 200, response.headers
        assert response.json() == {"ok": True, "path": "/pockets", "scheme": "DPoP"}
        post = proof(url, htm="POST", key=ED25519, alg="EdDSA", token=token)
        assert (await call(http, url, token, post, method="POST")).status_code == 200
        assert rs.proofs_verified == 2 and rs.records[0].jkt == server.jkt_of(token)


async def test_the_resource_server_refuses_each_mismatch(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    token = await dpop_token(http, server)
    other_token = await dpop_token(http, server, OTHER_P256)
    with DPoPResourceServer(jkt_of=server.jkt_of) as rs:
        url = rs.url + "/pockets"
        cases = {
            "ath": (token, proof(url, htm="GET", token=other_token), 'error="invalid_dpop_proof"', "ath"),
            "no-ath": (token, proof(url, htm="GET"), 'error="invalid_dpop_proof"', "ath"),
            "htu": (
                token,
                proof(rs.url + "/elsewhere", htm="GET", token=token),
                'error="invalid_dpop_proof"',
                "htu",
            ),
            "htm": (token, proof(url, htm="POST", token=token), 'error="invalid_dpop_proof"', "htm"),
            "typ": (
                token,
                proof(url, htm="GET", token=token, header={"typ": "JWT"}),
                "invalid_dpop_proof",
                "typ",
            ),
            "jkt": (other_token, proof(url, htm="GET", token=other_token), 'error="invalid_token"', "bound"),
            "unknown-token": (
                "at_unknown",
                proof(url, htm="GET", token="at_unknown"),
                "invalid_token",
                "unknown",
            ),
            "no-proof": (token, None, 'error="invalid_dpop_proof"', "0 DPoP headers"),
        }
        for name, (sent_token, sent_proof, error, reason) in cases.items():
            response = await call(http, url, sent_token, sent_proof)
            assert error in challenge(response), name
            assert reason in rs.records[-1].reason, (name, rs.records[-1])
        assert rs.proofs_verified == 0 and len(rs.records) == len(cases)


async def test_the_resource_server_refuses_a_replayed_proof(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    token = await dpop_token(http, server)
    with DPoPResourceServer(jkt_of=server.jkt_of) as rs:
        once = proof(rs.url + "/r", htm="GET", token=token)
        assert (await call(http, rs.url + "/r", token, once)).status_code == 200
        assert 'error="invalid_dpop_proof"' in challenge(await call(http, rs.url + "/r", token, once))
        assert rs.replays_refused == 1 and rs.outcomes() == ["ok", "invalid_dpop_proof"]


async def test_the_resource_server_demands_its_nonce(
    server: AuthorizationServer, http: httpx.AsyncClient
) -> None:
    token = await dpop_token(http, server)
    with DPoPResourceServer(jkt_of=server.jkt_of, require_nonce=True) as rs:
        url = rs.url + "/r"
        first = await call(http, url, token, proof(url, htm="GET", token=token))
        assert 'error="use_dpop_nonce"' in challenge(first)
        nonce = first.headers["DPoP-Nonce"]
        second = await call(http, url, token, proof(url, htm="GET", token=token, nonce=nonce))
        assert second.status_code == 200 and second.headers["DPoP-Nonce"] == nonce
        rs.rotate_nonce()
        stale = await call(http, url, token, proof(url, htm="GET", token=token, nonce=nonce))
        assert 'error="use_dpop_nonce"' in challenge(stale) and stale.headers["DPoP-Nonce"] != nonce
        assert rs.nonces_demanded == 2 and rs.proofs_verified == 1
        assert rs.records[1].nonce == nonce


async def test_the_resource_server_and_bearer(server: AuthorizationServer, http: httpx.AsyncClient) -> None:
    bound = await dpop_token(http, server)
    bearer = (await token_request(http, server)).json()["access_token"]
    with DPoPResourceServer(jkt_of=server.jkt_of) as strict:
        refusal = challenge(await call(http, strict.url + "/r", bearer, None, scheme="Bearer"))
        assert "error=" not in refusal and "algs=" in refusal
        assert challenge(await http.get(strict.url + "/r"))
        assert strict.outcomes() == ["unauthorized", "unauthorized"]
    with DPoPResourceServer(jkt_of=server.jkt_of, allow_bearer=True) as lenient:
        assert (await call(http, lenient.url + "/r", bearer, None, scheme="Bearer")).status_code == 200
        downgraded = await call(http, lenient.url + "/r", bound, None, scheme="Bearer")
        assert 'error="invalid_token"' in challenge(downgraded)
        assert lenient.outcomes() == ["bearer", "invalid_token"]


# -- oidc-provider's dpop configuration -------------------------------------------------------


@pytest.fixture(scope="module")
def op(oidc_servers: ProviderPool) -> AuthServer:
    return oidc_servers.get("dpop")


def client_assertion(op: AuthServer) -> dict[str, str]:
    client_id = DPOP_CLIENTS["private_key_jwt"]
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": op.issuer,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": jwt.encode(claims, make_key("p256"), algorithm="ES256"),
    }


async def op_token_request(
    http: httpx.AsyncClient, op: AuthServer, method: str, dpop: str | None = None
) -> httpx.Response:
    data = dict(FORM)
    headers = {"DPoP": dpop} if dpop is not None else {}
    if method == "private_key_jwt":
        data.update(client_assertion(op))
    elif method == "client_secret_post":
        data.update(client_id=DPOP_CLIENTS[method], client_secret=SECRET)
    else:
        return await http.post(
            op.token_endpoint, data=data, auth=(DPOP_CLIENTS[method], SECRET), headers=headers
        )
    return await http.post(op.token_endpoint, data=data, headers=headers)


async def test_oidc_provider_metadata(op: AuthServer) -> None:
    assert {"ES256", "PS256", "RS256", "EdDSA"} <= set(op.metadata["dpop_signing_alg_values_supported"])
    assert op.metadata["introspection_endpoint"]


@pytest.mark.parametrize("method", list(DPOP_CLIENTS))
async def test_oidc_provider_binds_a_token_after_its_nonce(
    op: AuthServer, http: httpx.AsyncClient, method: str
) -> None:
    without = await op_token_request(http, op, method)
    assert without.status_code == 400 and without.json()["error"] == "invalid_grant", without.text
    first = await op_token_request(http, op, method, proof(op.token_endpoint))
    assert first.status_code == 400 and first.json()["error"] == "use_dpop_nonce", first.text
    nonce = first.headers["DPoP-Nonce"]
    second = await op_token_request(http, op, method, proof(op.token_endpoint, nonce=nonce))
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["token_type"] == "DPoP"
    assert op.jkt_of(body["access_token"]) == thumbprint(public_jwk(P256))
    jti = uuid.uuid4().hex
    replayed = await op_token_request(http, op, method, proof(op.token_endpoint, nonce=nonce, jti=jti))
    assert replayed.status_code == 200
    again = await op_token_request(http, op, method, proof(op.token_endpoint, nonce=nonce, jti=jti))
    assert again.status_code == 400 and again.json()["error"] in ("invalid_dpop_proof", "invalid_grant")


async def test_oidc_provider_token_at_the_resource_server(op: AuthServer, http: httpx.AsyncClient) -> None:
    first = await op_token_request(http, op, "client_secret_basic", proof(op.token_endpoint))
    nonce = first.headers["DPoP-Nonce"]
    token = (
        await op_token_request(http, op, "client_secret_basic", proof(op.token_endpoint, nonce=nonce))
    ).json()["access_token"]
    with DPoPResourceServer(jkt_of=op.jkt_of) as rs:
        url = rs.url + "/pockets"
        assert (await call(http, url, token, proof(url, htm="GET", token=token))).status_code == 200
        stolen = await call(http, url, token, proof(url, htm="GET", key=OTHER_P256, token=token))
        assert 'error="invalid_token"' in challenge(stolen)
    assert op.jkt_of("not-a-token") is None


async def test_oidc_provider_bearer_clients_still_get_bearer(op: AuthServer, http: httpx.AsyncClient) -> None:
    response = await http.post(op.token_endpoint, data=FORM, auth=("secret-basic", SECRET))
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"
    assert op.jkt_of(response.json()["access_token"]) is None
