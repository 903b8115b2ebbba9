"""Fuzz what users and APIs hand the library: WWW-Authenticate challenges, PEM and JWK
keys, signer URIs. Only ``KeylessM2MError`` subclasses may escape, and never a secret."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m import ClientSecretPost, ConfigurationError, KeylessM2MError, TokenManager
from keyless_m2m.integrations.httpx import is_invalid_token_challenge
from keyless_m2m.signers import LocalSigner, signer_from_uri
from tests.fuzz.helpers import assert_clean, run_bounded
from tests.helpers import make_key, pem_of

SECRET = "fuzz-client-secret-9d2c7e"

# -- WWW-Authenticate ----------------------------------------------------------------------------

header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
challenges = st.one_of(
    header_text,
    st.builds(
        lambda scheme, params: f"{scheme} {params}",
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "DPoP", "Bearerx", ""]),
        st.lists(
            st.builds(
                lambda k, v, q: f"{k}={q}{v}{q}",
                st.sampled_from(["error", "realm", "scope", "error_description", "Error", "xerror"]),
                st.sampled_from(["invalid_token", "insufficient_scope", "invalid_tokenx", ""]) | header_text,
                st.sampled_from(['"', ""]),
            ),
            max_size=4,
        ).map(", ".join),
    ),
)


@given(st.lists(challenges, max_size=3), st.sampled_from([401, 401, 403, 200]))
def test_www_authenticate_parsing_never_raises(values: list[str], status: int) -> None:
    response = httpx.Response(status, headers=[("www-authenticate", v) for v in values])
    assert is_invalid_token_challenge(response) in (True, False)
    if status != 401:
        assert not is_invalid_token_challenge(response)


@given(st.lists(challenges, min_size=1, max_size=2))
def test_bearer_flow_retries_at_most_once_whatever_the_challenge(values: list[str]) -> None:
    challenge = [("www-authenticate", v) for v in values]
    token_requests: list[int] = []
    api_requests: list[str] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        token_requests.append(1)
        n = len(token_requests)
        return httpx.Response(200, json={"access_token": f"t{n}", "token_type": "Bearer", "expires_in": 600})

    def api(request: httpx.Request) -> httpx.Response:
        api_requests.append(request.headers["authorization"])
        return httpx.Response(401, headers=challenge)

    async def call() -> int:
        tokens = TokenManager(
            "https://auth.example/token",
            ClientSecretPost("c", SECRET),
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(token_endpoint)),
        )
        try:
            async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as http:
                return (await http.get("https://api.example/")).status_code
        finally:
            await tokens.endpoint._client().aclose()
            await tokens.aclose()

    assert run_bounded(call) == 401
    retried = is_invalid_token_challenge(httpx.Response(401, headers=challenge))
    assert len(api_requests) == (2 if retried else 1)
    assert len(token_requests) == len(api_requests)  # one refresh per invalid_token, no loop
    if retried:
        assert api_requests == ["Bearer t1", "Bearer t2"]


# -- PEM and JWK ---------------------------------------------------------------------------------

KINDS = ["rsa", "p256", "p384", "p521", "ed25519"]
PEMS = {kind: pem_of(make_key(kind)) for kind in KINDS}
PRIVATE_JWKS: dict[str, dict[str, Any]] = {
    kind: json.loads(jwcrypto_jwk.JWK.from_pem(pem).export_private()) for kind, pem in PEMS.items()
}
PEM_SECRETS = [pem.decode().splitlines()[1] for pem in PEMS.values()]


@st.composite
def mutated_pems(draw: st.DrawFn) -> bytes:
    pem = PEMS[draw(st.sampled_from(KINDS))]
    how = draw(st.sampled_from(["flip", "truncate", "insert", "header", "body"]))
    if how == "flip":
        i = draw(st.integers(0, len(pem) - 1))
        return pem[:i] + bytes([pem[i] ^ draw(st.integers(1, 255))]) + pem[i + 1 :]
    if how == "truncate":
        return pem[: draw(st.integers(0, len(pem) - 1))]
    if how == "insert":
        i = draw(st.integers(0, len(pem)))
        return pem[:i] + draw(st.binary(min_size=1, max_size=20)) + pem[i:]
    if how == "header":
        label = draw(
            st.sampled_from(["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
        )
        return b"-----BEGIN " + label.encode() + b"-----\n" + pem.split(b"\n", 1)[1]
    body = base64.encodebytes(draw(st.binary(max_size=400)))
    return b"-----BEGIN PRIVATE KEY-----\n" + body + b"-----END PRIVATE KEY-----\n"


@given(
    st.one_of(mutated_pems(), st.binary(max_size=300), st.text(max_size=200)),
    st.one_of(st.none(), st.text(max_size=10), st.binary(max_size=10)),
    st.sampled_from([None, "RS256", "PS512", "ES256", "ES384", "ES512", "EdDSA", "HS256", "none", ""]),
)
def test_pem_input_is_a_key_or_a_configuration_error(pem: Any, password: Any, algorithm: str | None) -> None:
    try:
        signer = LocalSigner.from_pem(pem, password, algorithm=algorithm)
    except ConfigurationError as exc:
        assert_clean(exc, PEM_SECRETS)
    else:
        assert signer.key_name and "PRIVATE" not in repr(signer)


jwk_members = st.dictionaries(
    st.sampled_from(["kty", "crv", "x", "y", "d", "n", "e", "p", "q", "dp", "dq", "qi", "alg", "kid", "use"]),
    st.one_of(st.text(max_size=30), st.integers(), st.none(), st.lists(st.integers(), max_size=2)),
    max_size=8,
)


@st.composite
def mutated_jwks(draw: st.DrawFn) -> Any:
    base = dict(PRIVATE_JWKS[draw(st.sampled_from(KINDS))])
    for name, value in draw(jwk_members).items():
        base[name] = value
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        base.pop(name, None)
    return base


@given(st.one_of(mutated_jwks(), jwk_members, st.text(max_size=100), st.just("[]"), st.just("null")))
def test_jwk_input_is_a_key_or_a_configuration_error(jwk: Any) -> None:
    secrets = [str(m["d"]) for m in PRIVATE_JWKS.values()]
    try:
        LocalSigner.from_jwk(jwk)
    except ConfigurationError as exc:
        assert_clean(exc, secrets)


# -- signer URIs ---------------------------------------------------------------------------------

uri_text = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"), max_size=60
)
schemes = st.sampled_from(
    ["file", "awskms", "gcpkms", "azurekms", "hashivault", "https", "http", "FILE", "AwsKms", "", "s3"]
)
uris = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda s, sep, rest: f"{s}{sep}{rest}", schemes, st.sampled_from(["://", ":///", ":/", ":"]), uri_text
    ),
    st.builds(lambda rest: f"https://{rest}.vault.azure.net/keys/{rest}", uri_text),
    st.builds(lambda rest: f"gcpkms://projects/{rest}/cryptoKeyVersions/1", uri_text),
    st.builds(lambda rest, q: f"hashivault://{rest}?{q}", uri_text, uri_text),
)


@pytest.fixture
def no_cloud_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in (
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the environment is read-only
@given(uris)
def test_signer_uri_is_a_signer_or_a_configuration_error(no_cloud_environment: None, uri: str) -> None:
    try:
        signer = signer_from_uri(uri)
    except ConfigurationError as exc:  # includes MissingExtraError
        assert_clean(exc, [])
        return
    except KeylessM2MError as exc:  # pragma: no cover - would be a wrong error class
        pytest.fail(f"{uri!r}: {type(exc).__name__} is not a ConfigurationError")
    # constructing a signer does no I/O; closing it must not fail either
    run_bounded(signer.aclose)


def test_jwk_with_a_non_string_alg_is_a_configuration_error() -> None:
    # found by the fuzzer: a list as "alg" reached a dict lookup and raised TypeError
    with pytest.raises(ConfigurationError, match="must be a string"):
        LocalSigner.from_jwk({**PRIVATE_JWKS["p256"], "alg": []})
