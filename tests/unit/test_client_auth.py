"""Client authentication: assertion claims and header, Basic form-encoding, secret hygiene."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from keyless_m2m import ClientSecretBasic, ClientSecretPost, ConfigurationError, PrivateKeyJWT
from keyless_m2m._jose import b64url_decode
from keyless_m2m._secret import Secret, reveal
from keyless_m2m.client_auth import CLIENT_ASSERTION_TYPE
from keyless_m2m.signers import LocalSigner
from tests.helpers import make_key, pem_of, verify_jws

pytestmark = pytest.mark.anyio
ENDPOINT = "https://auth.example/api/oauth2/token"


def _header(assertion: str) -> dict[str, Any]:
    return dict(json.loads(b64url_decode(assertion.split(".")[0])))


@pytest.fixture
def signer() -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key("ed25519")))


async def test_assertion_claims_and_header(signer: LocalSigner) -> None:
    auth = PrivateKeyJWT("my-client", signer)
    prepared = await auth.prepare(ENDPOINT)
    assert prepared.signed
    assert prepared.form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert prepared.form["client_id"] == "my-client"
    assertion = reveal(prepared.form["client_assertion"])
    description = await signer.describe()
    claims = verify_jws(assertion, dict(description.public_jwk), audience=ENDPOINT)
    assert claims["iss"] == claims["sub"] == "my-client"
    assert claims["exp"] - claims["iat"] == 60
    assert len(b64url_decode(claims["jti"])) * 8 >= 128
    assert _header(assertion) == {"alg": "EdDSA", "kid": description.key_id, "typ": "JWT"}


async def test_every_assertion_has_a_new_jti(signer: LocalSigner) -> None:
    auth = PrivateKeyJWT("c", signer)
    jtis = set()
    for _ in range(50):
        token = await auth.assertion(ENDPOINT)
        jtis.add(json.loads(b64url_decode(token.split(".")[1]))["jti"])
    assert len(jtis) == 50


async def test_issuer_mode_follows_rfc7523bis(signer: LocalSigner) -> None:
    auth = PrivateKeyJWT("c", signer, issuer="https://auth.example")
    assertion = await auth.assertion(ENDPOINT)
    claims = verify_jws(
        assertion, dict((await signer.describe()).public_jwk), audience="https://auth.example"
    )
    assert claims["aud"] == "https://auth.example"
    assert _header(assertion)["typ"] == "client-authentication+jwt"


async def test_explicit_audience_typ_and_extra_claims(signer: LocalSigner) -> None:
    auth = PrivateKeyJWT("c", signer, audience="urn:aud", lifetime=300, typ="", extra_claims={"tenant": "t1"})
    assertion = await auth.assertion(ENDPOINT)
    claims = json.loads(b64url_decode(assertion.split(".")[1]))
    assert claims["aud"] == "urn:aud" and claims["tenant"] == "t1" and claims["exp"] - claims["iat"] == 300
    assert "typ" not in _header(assertion)


def test_bad_configuration_is_refused(signer: LocalSigner) -> None:
    with pytest.raises(ConfigurationError, match="lifetime"):
        PrivateKeyJWT("c", signer, lifetime=301)
    with pytest.raises(ConfigurationError, match="lifetime"):
        PrivateKeyJWT("c", signer, lifetime=0)
    with pytest.raises(ConfigurationError, match="exp, iss"):
        PrivateKeyJWT("c", signer, extra_claims={"iss": "x", "exp": 1})
    with pytest.raises(ConfigurationError, match="client_id"):
        PrivateKeyJWT("", signer)
    with pytest.raises(ConfigurationError, match="signer"):
        PrivateKeyJWT("c", object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="client_secret"):
        ClientSecretBasic("c", "")


async def test_client_secret_basic_form_encodes_both_parts() -> None:
    auth = ClientSecretBasic("my client:1", "p@ss:wörd+%/")
    prepared = await auth.prepare(ENDPOINT)
    scheme, _, value = reveal(prepared.headers["Authorization"]).partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == "my+client%3A1:p%40ss%3Aw%C3%B6rd%2B%25%2F"
    assert dict(prepared.form) == {}
    assert not prepared.signed


async def test_client_secret_post() -> None:
    prepared = await ClientSecretPost("id", "sekrit-value").prepare(ENDPOINT)
    assert {k: reveal(v) for k, v in prepared.form.items()} == {
        "client_id": "id",
        "client_secret": "sekrit-value",
    }
    assert isinstance(prepared.form["client_secret"], Secret)


async def test_reprs_hide_secrets(signer: LocalSigner) -> None:
    for auth in (ClientSecretBasic("id", "sekrit-value"), ClientSecretPost("id", "sekrit-value")):
        assert "sekrit" not in repr(auth)
        prepared = await auth.prepare(ENDPOINT)
        assert "sekrit" not in repr(prepared) and "c2Vrcml0" not in repr(prepared)
    jwt_auth = PrivateKeyJWT("id", signer)
    prepared = await jwt_auth.prepare(ENDPOINT)
    assert reveal(prepared.form["client_assertion"]) not in repr(prepared)
    assert "PRIVATE" not in repr(jwt_auth)


def _self_signed(key: Any, subject: str = "svc") -> Any:
    """A certificate of ``key`` made locally with cryptography (the test's own, not the library's)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("policy", "issuer", "fallback", "aud", "typ"),
    [
        ("auto", None, False, ENDPOINT, "JWT"),
        ("auto", "https://auth.example", False, "https://auth.example", "client-authentication+jwt"),
        ("auto", "https://auth.example", True, ENDPOINT, "JWT"),
        ("issuer", "https://auth.example", True, "https://auth.example", "client-authentication+jwt"),
        ("token_endpoint", "https://auth.example", False, ENDPOINT, "JWT"),
    ],
)
async def test_audience_policy_chooses_aud_and_typ(
    signer: LocalSigner, policy: Any, issuer: str | None, fallback: bool, aud: str, typ: str
) -> None:
    auth = PrivateKeyJWT("c", signer, audience_policy=policy)
    prepared = await auth.prepare(ENDPOINT, issuer=issuer, fallback=fallback)
    assertion = reveal(prepared.form["client_assertion"])
    claims = verify_jws(assertion, dict((await signer.describe()).public_jwk), audience=aud)
    assert claims["aud"] == aud and isinstance(claims["aud"], str)  # one string, never a list
    assert _header(assertion)["typ"] == typ
    assert prepared.alternative == (policy == "auto" and aud != ENDPOINT)
    assert prepared.hint is not None and aud in prepared.hint
    # the issuer given to PrivateKeyJWT wins over the one the endpoint discovered
    pinned = PrivateKeyJWT("c", signer, issuer="https://pinned.example", audience_policy=policy)
    if aud != ENDPOINT:
        assert pinned.audience_for(ENDPOINT, issuer, fallback=fallback)[0] == "https://pinned.example"


async def test_certificate_headers_carry_independently_computed_thumbprints() -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    key = make_key("rsa")
    signer = LocalSigner.from_pem(pem_of(key), algorithm="PS256")
    cert = _self_signed(key)
    der = cert.public_bytes(Encoding.DER)
    pem = cert.public_bytes(Encoding.PEM)
    for given in (cert, pem, der, pem.decode(), [pem]):
        auth = PrivateKeyJWT(
            "c",
            signer,
            certificate=given,
            certificate_headers=("x5t#S256", "x5t", "x5c"),
            headers={"kid": "k1"},
        )
        header = _header(await auth.assertion(ENDPOINT))
        assert (
            header["x5t#S256"] == base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        )
        assert header["x5t"] == base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()  # noqa: S324
        assert header["x5c"] == [base64.b64encode(der).decode()]
        assert header["kid"] == "k1" and header["alg"] == "PS256"
    default = _header(await PrivateKeyJWT("c", signer, certificate=cert).assertion(ENDPOINT))
    assert "x5t#S256" in default and "x5t" not in default and "x5c" not in default


async def test_a_certificate_of_another_key_is_refused_before_signing() -> None:
    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    auth = PrivateKeyJWT("c", signer, certificate=_self_signed(make_key("p384")))
    with pytest.raises(ConfigurationError, match="not for the signer's key"):
        await auth.assertion(ENDPOINT)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"audience_policy": "strict"}, "audience_policy must be one of"),
        ({"headers": {"alg": "none"}}, "headers may not set alg"),
        ({"headers": {"x5c": []}}, "headers may not set x5c"),
        ({"certificate": b"not a certificate"}, "not a PEM or DER X.509 certificate"),
        ({"certificate": 42}, "certificate must be"),
        ({"certificate_headers": ("x5u",)}, "certificate_headers may name only"),
        ({"issuer": ""}, "must not be empty"),
        ({"issuer": 1}, "issuer must be a string"),
    ],
)
def test_bad_header_and_audience_options_are_refused(
    signer: LocalSigner, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PrivateKeyJWT("c", signer, **options)


async def test_fapi2_profile_sends_the_issuer_and_takes_iat_from_the_server_clock() -> None:
    import time

    signer = LocalSigner.from_pem(pem_of(make_key("p256")))
    jwk = dict((await signer.describe()).public_jwk)
    auth = PrivateKeyJWT("c", signer, profile="fapi2")
    assert auth.audience_policy == "issuer" and auth.correct_clock_skew
    with pytest.raises(ConfigurationError, match="needs the authorization server's issuer identifier"):
        await auth.prepare(ENDPOINT)  # never the token endpoint URL
    before = int(time.time())
    prepared = await auth.prepare(ENDPOINT, issuer="https://auth.example", clock_skew=-30.0, fallback=True)
    assertion = reveal(prepared.form["client_assertion"])
    claims = verify_jws(assertion, jwk, audience="https://auth.example")
    assert before - 31 <= claims["iat"] <= int(time.time()) - 29  # the server is 30 s behind
    assert claims["exp"] - claims["iat"] == 60 and not prepared.alternative
    noise = verify_jws(
        await auth.assertion(ENDPOINT, issuer="https://a", clock_skew=1.0), jwk, audience="https://a"
    )
    assert noise["iat"] >= before  # 1 s is the Date header's resolution, not a skew
    plain = PrivateKeyJWT("c", signer, issuer="https://a")
    assert (
        verify_jws(await plain.assertion(ENDPOINT, clock_skew=-30.0), jwk, audience="https://a")["iat"]
        >= before
    )


class _CountingSigner:
    """A signer over any public key (even one LocalSigner refuses), counting sign() calls."""

    def __init__(self, public_key: Any, algorithm: str) -> None:
        from keyless_m2m.signers import KeyDescription

        self.description = KeyDescription.for_public_key(public_key, algorithm)
        self.calls = 0

    async def describe(self) -> Any:
        return self.description

    async def sign(self, signing_input: bytes) -> bytes:
        self.calls += 1
        return b"\0" * 64

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("kind", "alg", "message"),
    [
        ("rsa", "RS256", "allows ES256, EdDSA, PS256 client assertions, not RS256"),
        ("p384", "ES384", "not ES384"),
        ("rsa1024", "PS256", "at least 2048 bits, this one has 1024"),
    ],
)
async def test_fapi2_profile_refuses_other_algorithms_and_small_keys_before_signing(
    kind: str, alg: str, message: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        if kind == "rsa1024"
        else make_key(kind)
    )
    signer = _CountingSigner(key.public_key(), alg)
    with pytest.raises(ConfigurationError, match=message):
        await PrivateKeyJWT("c", signer, profile="fapi2").assertion(ENDPOINT, issuer="https://a")
    assert signer.calls == 0
    if kind == "rsa":  # the same key is fine with PS256
        allowed = _CountingSigner(key.public_key(), "PS256")
        await PrivateKeyJWT("c", allowed, profile="fapi2").assertion(ENDPOINT, issuer="https://a")
        assert allowed.calls == 1


async def test_entra_profile_needs_a_certificate_and_sends_x5t_s256_to_the_token_endpoint() -> None:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    key = make_key("rsa")
    signer = LocalSigner.from_pem(pem_of(key), algorithm="PS256")
    with pytest.raises(ConfigurationError, match="needs certificate="):
        PrivateKeyJWT("c", signer, profile="entra")
    cert = _self_signed(key)
    auth = PrivateKeyJWT(
        "c", signer, profile="entra", certificate=cert, issuer="https://login.example/t/v2.0"
    )
    assertion = await auth.assertion(ENDPOINT)
    claims = verify_jws(assertion, dict((await signer.describe()).public_jwk), audience=ENDPOINT)
    header = _header(assertion)
    assert claims["aud"] == ENDPOINT and header["typ"] == "JWT" and header["alg"] == "PS256"
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    assert header["x5t#S256"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    rs256 = LocalSigner.from_pem(pem_of(key), algorithm="RS256")
    with pytest.raises(ConfigurationError, match="allows PS256"):
        await PrivateKeyJWT("c", rs256, profile="entra", certificate=cert).assertion(ENDPOINT)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profile": "fapi1"}, "profile must be one of"),
        ({"profile": "fapi2", "audience_policy": "auto"}, "do not pass audience= or another audience_policy"),
        ({"profile": "fapi2", "audience": "https://x"}, "do not pass audience="),
        ({"profile": "fapi2", "correct_clock_skew": False}, "corrects iat"),
    ],
)
def test_profile_conflicts_are_refused(signer: LocalSigner, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PrivateKeyJWT("c", signer, **options)


def test_fapi2_profile_needs_a_sender_constrained_token(tmp_path: Any) -> None:
    # FAPI 2.0 section 5.3.2.2: a Bearer token is not enough; refused before any request.
    from keyless_m2m.endpoint import TokenEndpoint
    from keyless_m2m.mtls import ClientCertificate
    from keyless_m2m.testing.tls import self_signed_client

    signer = LocalSigner.from_pem(pem_of(make_key("p256")), algorithm="ES256")
    auth = PrivateKeyJWT("c", signer, profile="fapi2")
    with pytest.raises(ConfigurationError, match=r"sender-constrained.*dpop=True.*client_certificate="):
        TokenEndpoint(ENDPOINT, auth)
    assert TokenEndpoint(ENDPOINT, auth, dpop=True).dpop is not None
    files = self_signed_client(str(tmp_path), "fapi")
    certificate = ClientCertificate(files.certificate, files.key)
    assert TokenEndpoint(ENDPOINT, auth, client_certificate=certificate).client_certificate is certificate
    # Other profiles and no profile: Bearer tokens are fine.
    assert TokenEndpoint(ENDPOINT, PrivateKeyJWT("c", signer)).dpop is None
