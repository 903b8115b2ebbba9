"""GcpKmsSigner without a network: names, URIs, the algorithm table, options, and the
requests/error mapping seen through an in-memory stand-in for the SDK's sync client."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from keyless_m2m.errors import ConfigurationError, SigningError
from keyless_m2m.signers import GcpKmsSigner, signer_from_uri
from keyless_m2m.signers.gcp import GCP_TO_JWS, jws_algorithm_for, parse_key_version_name
from tests.contract import sign_jws
from tests.gcp_stubs import NAME, StubClient
from tests.helpers import make_key, require_module, verify_jws

kms_v1 = require_module("google.cloud.kms_v1", reason="the gcp extra is not installed")
google_crc32c = require_module("google_crc32c")
core_exceptions = require_module("google.api_core.exceptions")

CRYPTO_KEY = NAME.rsplit("/cryptoKeyVersions/", 1)[0]


# -- names and URIs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        NAME,
        "projects/example.com:proj/locations/global/keyRings/r_1/cryptoKeys/k-2/cryptoKeyVersions/12",
    ],
)
def test_key_version_names_are_accepted(name: str) -> None:
    assert parse_key_version_name(name) == name
    assert GcpKmsSigner(name).key_name == name


@pytest.mark.parametrize("name", [CRYPTO_KEY, CRYPTO_KEY + "/", CRYPTO_KEY + "/cryptoKeyVersions/"])
def test_a_crypto_key_without_version_is_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"cryptoKeyVersions/N"):
        GcpKmsSigner(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "assertions",
        CRYPTO_KEY + "/cryptoKeyVersions/0",
        CRYPTO_KEY + "/cryptoKeyVersions/latest",
        NAME + "/extra",
        "projects/p/locations/l/keyRings/r/cryptoKeys/k/versions/1",
        "//cloudkms.googleapis.com/" + NAME + "?x",
    ],
)
def test_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="key version"):
        parse_key_version_name(name)


def test_uri_forms() -> None:
    assert GcpKmsSigner.from_uri("gcpkms://" + NAME).key_name == NAME
    assert GcpKmsSigner.from_uri("GCPKMS:///" + NAME).key_name == NAME
    signer = signer_from_uri("gcpkms://" + NAME, algorithm="ES256", key_id="k1")
    assert isinstance(signer, GcpKmsSigner)
    assert signer.key_name == NAME
    with pytest.raises(ConfigurationError, match="cryptoKeyVersions/N"):
        signer_from_uri("gcpkms://" + CRYPTO_KEY)
    with pytest.raises(ConfigurationError, match="gcpkms://"):
        GcpKmsSigner.from_uri("awskms:///alias/x")


def test_repr_names_the_key_only() -> None:
    assert repr(GcpKmsSigner(NAME)) == f"GcpKmsSigner(key={NAME!r}, alg=?)"


# -- the algorithm table --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gcp", "jws"),
    [
        ("RSA_SIGN_PKCS1_2048_SHA256", "RS256"),
        ("RSA_SIGN_PKCS1_3072_SHA256", "RS256"),
        ("RSA_SIGN_PKCS1_4096_SHA256", "RS256"),
        ("RSA_SIGN_PKCS1_4096_SHA512", "RS512"),
        ("RSA_SIGN_PSS_2048_SHA256", "PS256"),
        ("RSA_SIGN_PSS_3072_SHA256", "PS256"),
        ("RSA_SIGN_PSS_4096_SHA256", "PS256"),
        ("RSA_SIGN_PSS_4096_SHA512", "PS512"),
        ("EC_SIGN_P256_SHA256", "ES256"),
        ("EC_SIGN_P384_SHA384", "ES384"),
        ("EC_SIGN_ED25519", "EdDSA"),
    ],
)
def test_supported_algorithms(gcp: str, jws: str) -> None:
    assert jws_algorithm_for(gcp) == jws


@pytest.mark.parametrize(
    ("gcp", "why"),
    [
        ("EC_SIGN_SECP256K1_SHA256", "secp256k1"),
        ("RSA_SIGN_RAW_PKCS1_2048", "raw PKCS#1"),
        ("RSA_SIGN_RAW_PKCS1_4096", "raw PKCS#1"),
        ("PQ_SIGN_ML_DSA_65", "post-quantum"),
        ("PQ_SIGN_SLH_DSA_SHA2_128S", "post-quantum"),
        ("HMAC_SHA256", "HMAC"),
        ("GOOGLE_SYMMETRIC_ENCRYPTION", "symmetric"),
        ("EXTERNAL_SYMMETRIC_ENCRYPTION", "symmetric"),
        ("AES_256_GCM", "symmetric"),
        ("RSA_DECRYPT_OAEP_2048_SHA256", "decryption"),
        ("ML_KEM_768", "key-encapsulation"),
        ("CRYPTO_KEY_VERSION_ALGORITHM_UNSPECIFIED", "no algorithm"),
        ("SOMETHING_NEW", "knows no JWS algorithm"),
    ],
)
def test_unsupported_algorithms_say_why(gcp: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=why) as info:
        jws_algorithm_for(gcp)
    assert gcp in str(info.value)


def test_every_sdk_algorithm_maps_or_is_a_configuration_error() -> None:
    without_reason = []
    for member in kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm:
        if member.name in GCP_TO_JWS:
            continue
        with pytest.raises(ConfigurationError) as info:
            jws_algorithm_for(member.name)
        if "knows no JWS algorithm" in str(info.value):
            without_reason.append(member.name)
    assert without_reason == [], "these algorithms deserve a reason"


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client": object()}, "KeyManagementService"),
        ({"client": object(), "sync_client_factory": lambda: None}, "not both"),
        ({"sync_client_factory": lambda: None, "client_options": {}}, "factory"),
        ({"async_client_factory": "not callable"}, "callable"),
        ({"algorithm": "HS256"}, "unknown JWS algorithm"),
        ({"key_id": ""}, "key_id"),
        ({"timeout": 0}, "timeout"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        GcpKmsSigner(NAME, **options)


@pytest.mark.parametrize("option", ["max_attempts", "backoff", "max_backoff"])
def test_the_signer_has_no_retry_options(option: str) -> None:
    # The token endpoint owns the retries; the signer's own loop (and its knobs) is gone.
    with pytest.raises(TypeError, match=option):
        GcpKmsSigner(NAME, **{option: 2})


# -- through a stand-in sync client ------------------------------------------------------------


@pytest.fixture
def stub() -> StubClient:
    return StubClient(make_key("p256"), "EC_SIGN_P256_SHA256")


@pytest.mark.anyio
async def test_sends_a_digest_with_crc_and_turns_der_into_raw(stub: StubClient) -> None:
    signer = GcpKmsSigner(NAME, client=stub, timeout=3.5)
    description = await signer.describe()
    token = await sign_jws(signer, {"x": 1})
    assert verify_jws(token, dict(description.public_jwk)) == {"x": 1}
    request = stub.sign_requests[-1]
    signing_input = token.rsplit(".", 1)[0].encode()
    assert request.name == NAME
    assert request.digest.sha256 == hashlib.sha256(signing_input).digest()
    assert request.digest_crc32c == google_crc32c.value(request.digest.sha256)
    # The SDK's own retry is off: the token endpoint is the one layer that retries.
    # (GetPublicKey, then AsymmetricSign: both RPCs, not an empty list that proves nothing.)
    assert stub.kwargs == [{"retry": None, "timeout": 3.5}] * 2
    await signer.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc_type", "code", "retryable"),
    [
        ("ResourceExhausted", "RESOURCE_EXHAUSTED", True),
        ("ServiceUnavailable", "UNAVAILABLE", True),
        ("DeadlineExceeded", "DEADLINE_EXCEEDED", True),
        ("InternalServerError", "INTERNAL", True),
        ("PermissionDenied", "PERMISSION_DENIED", False),
        ("NotFound", "NOT_FOUND", False),
        ("FailedPrecondition", "FAILED_PRECONDITION", False),
        ("InvalidArgument", "INVALID_ARGUMENT", False),
        ("Unauthenticated", "UNAUTHENTICATED", False),
    ],
)
async def test_error_mapping(stub: StubClient, exc_type: str, code: str, retryable: bool) -> None:
    signer = GcpKmsSigner(NAME, client=stub)
    await signer.describe()
    leaky = "token ya29.SECRET-should-not-appear"
    stub.errors = [getattr(core_exceptions, exc_type)(leaky) for _ in range(3)]
    with pytest.raises(SigningError) as info:
        await signer.sign(b"a.b")
    error = info.value
    assert (error.code, error.retryable, error.key) == (code, retryable, NAME)
    assert code in str(error)
    assert NAME in str(error)
    assert "ya29" not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert len(stub.sign_requests) == 1  # one RPC, retryable or not: the token endpoint retries


@pytest.mark.anyio
async def test_unexpected_exception_is_a_signing_error_without_its_text(stub: StubClient) -> None:
    signer = GcpKmsSigner(NAME, client=stub)
    await signer.describe()
    stub.errors = [RuntimeError("secret detail")]
    with pytest.raises(SigningError, match="RuntimeError") as info:
        await signer.sign(b"a.b")
    assert "secret detail" not in str(info.value)
    assert not info.value.retryable


@pytest.mark.anyio
async def test_public_key_of_another_type_than_reported_is_refused() -> None:
    stub = StubClient(make_key("p384"), "EC_SIGN_P256_SHA256")
    with pytest.raises(SigningError, match="EC_SIGN_P256_SHA256"):
        await GcpKmsSigner(NAME, client=stub).describe()


@pytest.mark.anyio
async def test_unknown_algorithm_number_is_a_configuration_error(stub: StubClient) -> None:
    original = stub.get_public_key

    def newer_server(**kwargs: Any) -> Any:
        response = original(**kwargs)
        type(response).pb(response).algorithm = 4242
        return response

    stub.get_public_key = newer_server  # type: ignore[method-assign]
    with pytest.raises(ConfigurationError, match="4242"):
        await GcpKmsSigner(NAME, client=stub).describe()


@pytest.mark.anyio
async def test_missing_default_credentials_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.auth import exceptions as auth_exceptions

    def no_credentials(*args: Any, **kwargs: Any) -> Any:
        raise auth_exceptions.DefaultCredentialsError("no ADC at /home/someone/.config")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    signer = GcpKmsSigner(NAME)
    with pytest.raises(ConfigurationError, match="Application Default Credentials") as info:
        await signer.describe()
    assert "/home/someone" not in str(info.value)
    await signer.aclose()
