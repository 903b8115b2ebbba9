"""Self-test: the oidc-provider test server behaves as the integration tests expect."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

pytestmark = pytest.mark.integration

# Load harness.py by path so this works whatever pytest's import mode is.
_spec = importlib.util.spec_from_file_location(
    "oidc_provider_harness", Path(__file__).with_name("harness.py")
)
assert _spec is not None
assert _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness
_spec.loader.exec_module(harness)

SCOPES = ["pockets.read", "pockets.write", "pockets.admin"]
TTL = 600
SECRET = "selftest-secret-0123456789abcdef"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
ED25519_KEY = ed25519.Ed25519PrivateKey.generate()


def _jwks(jwk: dict[str, Any]) -> dict[str, Any]:
    return {"keys": [jwk]}


def _pkjwt_client(client_id: str, jwk: dict[str, Any], alg: str | None = None) -> dict[str, Any]:
    client: dict[str, Any] = {
        "client_id": client_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": _jwks(jwk),
        "scope": "pockets.read pockets.write",
    }
    if alg:
        client["token_endpoint_auth_signing_alg"] = alg
    return client


CLIENTS = [
    # No pinned alg: any enabled RSA alg (RS256, PS256, ...) is accepted.
    _pkjwt_client("rsa-client", RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True)),
    _pkjwt_client("es256-client", ECAlgorithm.to_jwk(P256_KEY.public_key(), as_dict=True), "ES256"),
    _pkjwt_client("es384-client", ECAlgorithm.to_jwk(P384_KEY.public_key(), as_dict=True), "ES384"),
    _pkjwt_client("eddsa-client", OKPAlgorithm.to_jwk(ED25519_KEY.public_key(), as_dict=True), "EdDSA"),
    {
        "client_id": "basic-client",
        "client_secret": SECRET,
        "token_endpoint_auth_method": "client_secret_basic",
        "scope": "pockets.read",
    },
    {
        "client_id": "post-client",
        "client_secret": SECRET,
        "token_endpoint_auth_method": "client_secret_post",
        "scope": "pockets.read",
    },
]


@pytest.fixture(scope="module")
def op() -> Iterator[Any]:
    problem = harness.ensure_installed()
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    started = time.monotonic()
    server = harness.start_oidc_provider(CLIENTS, SCOPES, access_token_ttl=TTL)
    print(f"oidc-provider {server.issuer} pid {server.pid} up in {time.monotonic() - started:.2f}s")
    try:
        yield server
    finally:
        server.stop()
    assert not server.running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def _assertion(client_id: str, key: Any, alg: str, aud: str, jti: str | None = None) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=alg)


def _pkjwt_request(
    http: httpx.Client, op: Any, assertion: str, scope: str = "pockets.read", **extra: str
) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        **extra,
    }
    return http.post(op.token_endpoint, data=data)


def _assert_token(resp: httpx.Response, scope: str = "pockets.read") -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    assert body["token_type"].lower() == "bearer"
    assert body["access_token"]
    assert body["expires_in"] == TTL
    assert body["scope"] == scope
    return body


def _assert_error(resp: httpx.Response, error: str) -> None:
    assert resp.status_code in (400, 401), resp.text
    assert resp.json()["error"] == error, resp.text


def test_discovery(op: Any, http: httpx.Client) -> None:
    assert op.issuer.startswith("http://127.0.0.1:")
    assert not op.issuer.endswith("/")
    meta = http.get(f"{op.issuer}/.well-known/openid-configuration").json()
    assert meta["issuer"] == op.issuer
    assert meta["token_endpoint"] == op.token_endpoint
    assert {"private_key_jwt", "client_secret_basic", "client_secret_post"} <= set(
        meta["token_endpoint_auth_methods_supported"]
    )
    assert {"RS256", "PS256", "ES256", "ES384", "ES512", "EdDSA"} <= set(
        meta["token_endpoint_auth_signing_alg_values_supported"]
    )
    assert "client_credentials" in meta["grant_types_supported"]
    rfc8414 = http.get(f"{op.issuer}/.well-known/oauth-authorization-server")
    assert rfc8414.status_code == 200
    assert rfc8414.json() == meta


@pytest.mark.parametrize(
    ("client_id", "key", "alg"),
    [
        ("rsa-client", RSA_KEY, "RS256"),
        ("rsa-client", RSA_KEY, "PS256"),
        ("es256-client", P256_KEY, "ES256"),
        ("es384-client", P384_KEY, "ES384"),
        ("eddsa-client", ED25519_KEY, "EdDSA"),
    ],
)
def test_private_key_jwt(op: Any, http: httpx.Client, client_id: str, key: Any, alg: str) -> None:
    _assert_token(_pkjwt_request(http, op, _assertion(client_id, key, alg, op.token_endpoint)))


def test_aud_issuer_accepted(op: Any, http: httpx.Client) -> None:
    _assert_token(_pkjwt_request(http, op, _assertion("es256-client", P256_KEY, "ES256", op.issuer)))


def test_wrong_aud_rejected(op: Any, http: httpx.Client) -> None:
    resp = _pkjwt_request(
        http, op, _assertion("es256-client", P256_KEY, "ES256", "https://elsewhere.invalid")
    )
    _assert_error(resp, "invalid_client")


def test_replayed_jti_rejected(op: Any, http: httpx.Client) -> None:
    assertion = _assertion("rsa-client", RSA_KEY, "RS256", op.token_endpoint)
    _assert_token(_pkjwt_request(http, op, assertion))
    _assert_error(_pkjwt_request(http, op, assertion), "invalid_client")
    # Same jti in a freshly signed assertion is a replay too.
    jti = uuid.uuid4().hex
    _assert_token(
        _pkjwt_request(http, op, _assertion("rsa-client", RSA_KEY, "RS256", op.token_endpoint, jti))
    )
    again = _assertion("rsa-client", RSA_KEY, "PS256", op.token_endpoint, jti)
    _assert_error(_pkjwt_request(http, op, again), "invalid_client")


def test_wrong_key_rejected(op: Any, http: httpx.Client) -> None:
    resp = _pkjwt_request(http, op, _assertion("rsa-client", OTHER_RSA_KEY, "RS256", op.token_endpoint))
    _assert_error(resp, "invalid_client")


def test_pinned_alg_mismatch_rejected(op: Any, http: httpx.Client) -> None:
    # es384-client pins ES384; an otherwise valid ES256 assertion from another key fails.
    resp = _pkjwt_request(http, op, _assertion("es384-client", P256_KEY, "ES256", op.token_endpoint))
    _assert_error(resp, "invalid_client")


def test_client_secret_basic(op: Any, http: httpx.Client) -> None:
    resp = http.post(
        op.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "pockets.read"},
        auth=("basic-client", SECRET),
    )
    _assert_token(resp)
    bad = http.post(
        op.token_endpoint, data={"grant_type": "client_credentials"}, auth=("basic-client", "nope")
    )
    _assert_error(bad, "invalid_client")


def test_client_secret_post(op: Any, http: httpx.Client) -> None:
    data = {
        "grant_type": "client_credentials",
        "scope": "pockets.read",
        "client_id": "post-client",
        "client_secret": SECRET,
    }
    _assert_token(http.post(op.token_endpoint, data=data))


@pytest.mark.parametrize("scope", ["pockets.delete", "pockets.admin", "pockets.read pockets.delete"])
def test_scope_outside_allowed_set(op: Any, http: httpx.Client, scope: str) -> None:
    # pockets.delete: unknown to the server; pockets.admin: known but not granted to the client.
    resp = _pkjwt_request(
        http, op, _assertion("rsa-client", RSA_KEY, "RS256", op.token_endpoint), scope=scope
    )
    _assert_error(resp, "invalid_scope")


def test_multiple_scopes(op: Any, http: httpx.Client) -> None:
    resp = _pkjwt_request(
        http,
        op,
        _assertion("rsa-client", RSA_KEY, "RS256", op.token_endpoint),
        scope="pockets.read pockets.write",
    )
    _assert_token(resp, scope="pockets.read pockets.write")


def test_resource_indicator_gives_jwt_with_aud(op: Any, http: httpx.Client) -> None:
    resource = "https://pockets.example.test/"
    resp = _pkjwt_request(
        http, op, _assertion("rsa-client", RSA_KEY, "RS256", op.token_endpoint), resource=resource
    )
    body = _assert_token(resp)
    jwks = http.get(str(op.metadata["jwks_uri"])).json()
    signing_key = jwt.PyJWKSet.from_dict(jwks).keys[0].key
    claims = jwt.decode(
        body["access_token"], signing_key, algorithms=["RS256"], audience=resource, issuer=op.issuer
    )
    assert claims["client_id"] == "rsa-client"
    assert claims["scope"] == "pockets.read"
    assert claims["exp"] - claims["iat"] == TTL
