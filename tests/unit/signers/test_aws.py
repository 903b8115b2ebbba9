"""AwsKmsSigner without a network: the exact requests sent to AWS KMS, and the answers.

moto differs from real AWS exactly where this file looks hardest: it ignores
``MessageType=DIGEST`` (it hashes the digest again), signs PSS with the maximum salt and
has no Ed25519. So the DIGEST, PS* and EdDSA paths are checked here with botocore's
``Stubber`` on a real boto3 KMS client (request parameters validated against the service
model, ``expected_params`` compared exactly), and the stubbed signatures are made locally
the way AWS documents them, then verified with PyJWT.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import ConfigurationError, MissingExtraError, SigningError
from keyless_m2m._jose import ALGORITHMS, public_jwk
from keyless_m2m.signers import AwsKmsSigner, Signer, signer_from_uri
from tests.aws_stubs import (
    ACCESS_KEY_ID,
    ACCOUNT,
    ALIAS,
    KEY_ARN,
    KEY_UUID,
    KMS_ALG,
    REGION,
    SECRET_ACCESS_KEY,
    SIGNING_OF_KIND,
    FakeKms,
    expect_describe,
    expect_sign,
    kms_client,
    public_key_response,
    spki,
)
from tests.contract import SignerContract, sign_jws
from tests.helpers import ALG_KEYS, make_key, require_module, verify_jws
from tests.processes import run_python

# Skip (not error) in a test environment without the aws extra.
boto3 = require_module("boto3", reason="the aws extra (boto3) is not installed")
botocore_errors = require_module("botocore.exceptions")
Stubber = require_module("botocore.stub").Stubber

pytestmark = pytest.mark.anyio


@pytest.fixture
def kms() -> Iterator[Any]:
    client = kms_client()
    yield client
    client.close()


@pytest.fixture
def stub(kms: Any) -> Iterator[Any]:
    with Stubber(kms) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def jws_with_input(signing_input: bytes, signature: bytes) -> str:
    from keyless_m2m._jose import b64url

    return f"{signing_input.decode()}.{b64url(signature)}"


async def long_signing_input(signer: Signer, min_size: int) -> bytes:
    """A real JWS signing input (valid JSON segments) of at least ``min_size`` bytes."""
    from keyless_m2m._jose import encode_segment

    description = await signer.describe()
    header = encode_segment({"alg": description.algorithm, "kid": description.key_id})
    # 3 bytes of JSON become 4 base64url characters: this pad always reaches min_size.
    claims = encode_segment({"pad": "x" * (3 * min_size // 4 + 3)})
    return f"{header}.{claims}".encode()


# -- the shared contract, through a fake KMS client with real-AWS semantics ------------------


@pytest.fixture(params=["RS256", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"])
def expected_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def signer(expected_alg: str) -> AwsKmsSigner:
    return AwsKmsSigner(ALIAS, client=FakeKms(ALG_KEYS[expected_alg]), algorithm=expected_alg)


class TestAwsKmsSignerWithAwsSemantics(SignerContract):
    """The shared contract against a fake client that signs as real AWS does (covers the
    PS* and EdDSA paths that moto cannot)."""


# -- describe(): key specs, usage, algorithm choice ------------------------------------------


@pytest.mark.parametrize(
    ("kind", "spec", "alg"),
    [
        ("rsa", "RSA_2048", "RS256"),
        ("rsa", "RSA_3072", "RS256"),
        ("rsa", "RSA_4096", "RS256"),
        ("p256", "ECC_NIST_P256", "ES256"),
        ("p384", "ECC_NIST_P384", "ES384"),
        ("p521", "ECC_NIST_P521", "ES512"),
        ("ed25519", "ECC_NIST_EDWARDS25519", "EdDSA"),
    ],
)
async def test_key_spec_decides_the_algorithm(kms: Any, stub: Any, kind: str, spec: str, alg: str) -> None:
    key = make_key(kind)
    stub.add_response(
        "get_public_key",
        public_key_response(key, spec, signing=SIGNING_OF_KIND[kind]),
        {"KeyId": ALIAS},
    )
    signer = AwsKmsSigner(ALIAS, client=kms)
    description = await signer.describe()
    assert description.algorithm == alg
    assert {k: v for k, v in description.public_jwk.items() if k not in ("kid", "alg", "use")} == public_jwk(
        key.public_key()
    )
    assert await signer.describe() is description  # one GetPublicKey: the stub holds no second answer


@pytest.mark.parametrize("field", ["KeySpec", "CustomerMasterKeySpec", "both"])
async def test_reads_keyspec_or_the_deprecated_field(kms: Any, stub: Any, field: str) -> None:
    # Real AWS returns both; moto only CustomerMasterKeySpec.
    stub.add_response(
        "get_public_key",
        public_key_response(make_key("p384"), "ECC_NIST_P384", field=field, signing=["ECDSA_SHA_384"]),
        {"KeyId": KEY_ARN},
    )
    assert (await AwsKmsSigner(KEY_ARN, client=kms).describe()).algorithm == "ES384"


@pytest.mark.parametrize(
    ("spec", "usage", "der"),
    [
        ("ECC_SECG_P256K1", "SIGN_VERIFY", spki(ec.generate_private_key(ec.SECP256K1()))),
        ("SM2", "SIGN_VERIFY", b"\x30\x00"),
        ("ML_DSA_65", "SIGN_VERIFY", b"\x30\x00"),
        ("ML_DSA_44", "SIGN_VERIFY", b"\x30\x00"),
        ("HMAC_256", "GENERATE_VERIFY_MAC", None),
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", None),
        ("ML_KEM_768", "KEY_AGREEMENT", None),
    ],
    ids=lambda value: value if isinstance(value, str) else "der" if value else "none",
)
async def test_key_specs_without_a_jws_algorithm_are_configuration_errors(
    kms: Any, stub: Any, spec: str, usage: str, der: bytes | None
) -> None:
    response = public_key_response(spec=spec, usage=usage, der=der)
    stub.add_response("get_public_key", response, {"KeyId": ALIAS})
    with pytest.raises(ConfigurationError) as caught:
        await AwsKmsSigner(ALIAS, client=kms).describe()
    assert ALIAS in str(caught.value)
    assert spec in str(caught.value)
    assert not caught.value.retryable


async def test_key_usage_must_be_sign_verify(kms: Any, stub: Any) -> None:
    response = public_key_response(make_key("rsa"), "RSA_2048", usage="ENCRYPT_DECRYPT")
    response["EncryptionAlgorithms"] = ["RSAES_OAEP_SHA_256"]
    stub.add_response("get_public_key", response, {"KeyId": ALIAS})
    with pytest.raises(ConfigurationError, match=r"alias/payments-m2m.*ENCRYPT_DECRYPT.*RSA_2048"):
        await AwsKmsSigner(ALIAS, client=kms).describe()


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
async def test_rsa_algorithms_on_request(kms: Any, stub: Any, alg: str) -> None:
    expect_describe(stub, "rsa", ALIAS)
    assert (await AwsKmsSigner(ALIAS, client=kms, algorithm=alg).describe()).algorithm == alg


async def test_requested_algorithm_must_be_allowed_by_the_key(kms: Any, stub: Any) -> None:
    response = public_key_response(make_key("rsa"), "RSA_2048", signing=[KMS_ALG["RS256"]])
    stub.add_response("get_public_key", response, {"KeyId": ALIAS})
    with pytest.raises(ConfigurationError, match=r"alias/payments-m2m: PS256 is not allowed"):
        await AwsKmsSigner(ALIAS, client=kms, algorithm="PS256").describe()


async def test_default_follows_the_keys_signing_algorithms(kms: Any, stub: Any) -> None:
    response = public_key_response(make_key("rsa"), "RSA_2048", signing=[KMS_ALG["PS384"], KMS_ALG["PS256"]])
    stub.add_response("get_public_key", response, {"KeyId": ALIAS})
    assert (await AwsKmsSigner(ALIAS, client=kms).describe()).algorithm == "PS256"


async def test_algorithm_must_fit_the_curve(kms: Any, stub: Any) -> None:
    expect_describe(stub, "p256", ALIAS)
    with pytest.raises(ConfigurationError, match="ES384 does not fit"):
        await AwsKmsSigner(ALIAS, client=kms, algorithm="ES384").describe()


async def test_public_key_must_match_the_key_spec(kms: Any, stub: Any) -> None:
    response = public_key_response(make_key("rsa"), "ECC_NIST_P256", signing=["ECDSA_SHA_256"])
    stub.add_response("get_public_key", response, {"KeyId": ALIAS})
    with pytest.raises(SigningError, match="no usable ECC_NIST_P256 public key") as caught:
        await AwsKmsSigner(ALIAS, client=kms).describe()
    assert caught.value.key == ALIAS


async def test_user_given_kid(kms: Any, stub: Any) -> None:
    expect_describe(stub, "p256", ALIAS)
    description = await AwsKmsSigner(ALIAS, client=kms, key_id="payments-2025").describe()
    assert description.key_id == description.public_jwk["kid"] == "payments-2025"


# -- sign(): the exact Sign requests -----------------------------------------------------------


@pytest.mark.parametrize("alg", list(KMS_ALG))
async def test_short_input_is_signed_raw(kms: Any, stub: Any, alg: str) -> None:
    kind = ALG_KEYS[alg]
    expect_describe(stub, kind, ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms, algorithm=alg)
    description = await signer.describe()
    signing_input = b"eyJhbGciOiJ9.eyJzdWIiOiJ4In0"
    # Sign goes to the key ARN GetPublicKey resolved, not to the alias.
    expect_sign(stub, kind, alg, signing_input, "RAW", key_id=KEY_ARN)
    signature = await signer.sign(signing_input)
    if ALGORITHMS[alg].family == "EC":
        assert len(signature) == 2 * ALGORITHMS[alg].coordinate_size  # DER became r || s
    verify_raw(description.public_jwk, alg, signing_input, signature)


def verify_raw(jwk: Any, alg: str, data: bytes, signature: bytes) -> None:
    import jwt

    algorithm = jwt.get_algorithm_by_name(alg)
    key = jwt.PyJWK.from_dict(dict(jwk), algorithm=alg).key
    assert algorithm.verify(data, key, signature)


@pytest.mark.parametrize(
    "alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
)
async def test_long_input_is_hashed_locally_and_sent_as_digest(kms: Any, stub: Any, alg: str) -> None:
    kind = ALG_KEYS[alg]
    expect_describe(stub, kind, ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms, algorithm=alg)
    description = await signer.describe()
    signing_input = await long_signing_input(signer, 5000)
    digest = hashlib.new(ALGORITHMS[alg].hash_name or "", signing_input).digest()
    expect_sign(stub, kind, alg, digest, "DIGEST")
    signature = await signer.sign(signing_input)
    assert verify_jws(jws_with_input(signing_input, signature), dict(description.public_jwk))["pad"]


@pytest.mark.parametrize(("size", "message_type"), [(4096, "RAW"), (4097, "DIGEST")])
async def test_raw_limit_is_4096_bytes(kms: Any, stub: Any, size: int, message_type: str) -> None:
    expect_describe(stub, "p256", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    description = await signer.describe()
    signing_input = b"h.c" + b"x" * (size - 3)
    message = signing_input if message_type == "RAW" else hashlib.sha256(signing_input).digest()
    expect_sign(stub, "p256", "ES256", message, message_type)
    signature = await signer.sign(signing_input)
    verify_raw(description.public_jwk, "ES256", signing_input, signature)


@pytest.mark.parametrize("alg", ["PS256", "PS384", "PS512"])
async def test_pss_signatures_use_the_pss_algorithm_names(kms: Any, stub: Any, alg: str) -> None:
    expect_describe(stub, "rsa", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms, algorithm=alg)
    description = await signer.describe()
    claims = {"sub": "pss", "jti": alg}
    from keyless_m2m._jose import encode_segment

    header = {"alg": alg, "kid": description.key_id}
    signing_input = f"{encode_segment(header)}.{encode_segment(claims)}".encode()
    expect_sign(stub, "rsa", alg, signing_input, "RAW")
    token = await sign_jws(signer, claims)
    assert verify_jws(token, dict(description.public_jwk)) == claims


async def test_ed25519_request_shape(kms: Any, stub: Any) -> None:
    expect_describe(stub, "ed25519", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    description = await signer.describe()
    assert description.algorithm == "EdDSA"
    signing_input = b"h.c" + b"x" * 4093  # exactly the RAW limit
    expect_sign(stub, "ed25519", "EdDSA", signing_input, "RAW")
    signature = await signer.sign(signing_input)
    assert len(signature) == 64
    verify_raw(description.public_jwk, "EdDSA", signing_input, signature)


async def test_ed25519_refuses_input_over_4096_bytes(kms: Any, stub: Any) -> None:
    expect_describe(stub, "ed25519", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    await signer.describe()
    signing_input = b"h.c" + b"x" * 4094
    with pytest.raises(SigningError, match=r"alias/payments-m2m: EdDSA input is 4097 bytes.*4096") as caught:
        await signer.sign(signing_input)
    assert not caught.value.retryable
    assert caught.value.key == ALIAS
    # No Sign request was made: the stub has nothing queued, and would have failed loudly.


async def test_malformed_ecdsa_signature(kms: Any, stub: Any) -> None:
    expect_describe(stub, "p256", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    await signer.describe()
    stub.add_response(
        "sign", {"KeyId": KEY_ARN, "Signature": b"\x30\x02garbage", "SigningAlgorithm": "ECDSA_SHA_256"}
    )
    with pytest.raises(SigningError, match=r"alias/payments-m2m: .*malformed ECDSA") as caught:
        await signer.sign(b"a.b")
    assert caught.value.key == ALIAS


# -- errors -------------------------------------------------------------------------------------

ERROR_TABLE = [
    ("ThrottlingException", 400, True),
    ("KMSInternalException", 500, True),
    ("DependencyTimeoutException", 503, True),
    ("KeyUnavailableException", 500, True),
    ("AccessDeniedException", 400, False),
    ("NotFoundException", 400, False),
    ("DisabledException", 400, False),
    ("KMSInvalidStateException", 400, False),
    ("InvalidKeyUsageException", 400, False),
    ("ValidationException", 400, False),
    ("SomethingNewException", 503, True),  # unknown code: HTTP status decides
    ("SomethingNewException", 429, True),
    ("SomethingNewException", 400, False),
]


@pytest.mark.parametrize(("code", "status", "retryable"), ERROR_TABLE)
async def test_sign_error_mapping(kms: Any, stub: Any, code: str, status: int, retryable: bool) -> None:
    expect_describe(stub, "p256", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    await signer.describe()
    stub.add_client_error("sign", code, f"details about {code}", http_status_code=status)
    with pytest.raises(SigningError) as caught:
        await signer.sign(b"a.b")
    error = caught.value
    assert error.retryable is retryable
    assert error.code == code
    assert error.key == ALIAS
    assert code in str(error)
    assert ALIAS in str(error)
    assert "Sign" in str(error)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("AccessDeniedException", False),
        ("NotFoundException", False),
        ("DisabledException", False),
        ("ThrottlingException", True),
        ("KMSInternalException", True),
    ],
)
async def test_get_public_key_error_mapping(kms: Any, stub: Any, code: str, retryable: bool) -> None:
    stub.add_client_error("get_public_key", code, "no", http_status_code=400)
    with pytest.raises(SigningError) as caught:
        await AwsKmsSigner(ALIAS, client=kms).describe()
    assert caught.value.retryable is retryable
    assert caught.value.code == code
    assert "GetPublicKey" in str(caught.value)
    assert ALIAS in str(caught.value)


@pytest.mark.parametrize(
    "code", ["UnsupportedOperationException", "InvalidKeyUsageException", "InvalidArnException"]
)
async def test_get_public_key_refusing_the_key_is_a_configuration_error(
    kms: Any, stub: Any, code: str
) -> None:
    # Real AWS answers GetPublicKey on a symmetric key with UnsupportedOperationException.
    stub.add_client_error("get_public_key", code, "symmetric", http_status_code=400)
    with pytest.raises(ConfigurationError, match=code):
        await AwsKmsSigner(ALIAS, client=kms).describe()


async def test_describe_can_be_retried_after_a_transient_error(kms: Any, stub: Any) -> None:
    stub.add_client_error("get_public_key", "ThrottlingException", "slow down", http_status_code=400)
    expect_describe(stub, "p256", ALIAS)
    signer = AwsKmsSigner(ALIAS, client=kms)
    with pytest.raises(SigningError, match="ThrottlingException") as caught:
        await signer.describe()
    assert caught.value.retryable
    assert (await signer.describe()).algorithm == "ES256"


async def test_errors_carry_no_credentials(kms: Any, stub: Any) -> None:
    # InvalidSignatureException messages echo the string-to-sign, access key id included.
    message = (
        "The request signature we calculated does not match the signature you provided. "
        f"Credential={ACCESS_KEY_ID}/20250101/{REGION}/kms/aws4_request secret={SECRET_ACCESS_KEY}"
    )
    stub.add_client_error("get_public_key", "InvalidSignatureException", message, http_status_code=400)
    with pytest.raises(SigningError) as caught:
        await AwsKmsSigner(ALIAS, client=kms).describe()
    error = caught.value
    assert error.code == "InvalidSignatureException"
    assert not error.retryable
    for text in (str(error), repr(error), repr(error.args)):
        assert ACCESS_KEY_ID not in text
        assert SECRET_ACCESS_KEY not in text
    assert error.__cause__ is None
    assert error.__context__ is None


class RaisingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_public_key(self, **params: Any) -> Any:
        raise self.exc

    def sign(self, **params: Any) -> Any:
        raise self.exc


PROXY_WITH_PASSWORD = f"http://user:{SECRET_ACCESS_KEY}@proxy.internal:3128"


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (botocore_errors.EndpointConnectionError(endpoint_url="https://kms.eu-west-1.amazonaws.com/"), True),
        (botocore_errors.ConnectTimeoutError(endpoint_url="https://kms.eu-west-1.amazonaws.com/"), True),
        (botocore_errors.ReadTimeoutError(endpoint_url="https://kms.eu-west-1.amazonaws.com/"), True),
        (botocore_errors.ConnectionClosedError(endpoint_url="https://kms.eu-west-1.amazonaws.com/"), True),
        (botocore_errors.ProxyConnectionError(proxy_url=PROXY_WITH_PASSWORD, error="refused"), True),
        (
            botocore_errors.SSLError(endpoint_url="https://kms.eu-west-1.amazonaws.com/", error="bad cert"),
            False,
        ),
        (botocore_errors.NoCredentialsError(), False),
        (botocore_errors.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), False),
    ],
)
async def test_botocore_errors(exc: Exception, retryable: bool) -> None:
    signer = AwsKmsSigner(ALIAS, client=RaisingClient(exc))
    with pytest.raises(SigningError) as caught:
        await signer.describe()
    error = caught.value
    assert error.retryable is retryable
    assert error.code == type(exc).__name__
    assert ALIAS in str(error)
    assert SECRET_ACCESS_KEY not in str(error)
    assert error.__cause__ is None
    assert error.__context__ is None


async def test_unexpected_exceptions_are_not_disguised() -> None:
    signer = AwsKmsSigner(ALIAS, client=RaisingClient(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        await signer.describe()


async def test_no_region_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    signer = AwsKmsSigner(ALIAS)
    with pytest.raises(ConfigurationError, match="no AWS region"):
        await signer.describe()
    await signer.aclose()


# -- the client: created once, limited, closed -------------------------------------------------


class FakeBoto3:
    """Stands in for the boto3 module: counts client creations (slowly, to invite races)."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.clients: list[FakeKms] = []
        outer = self

        class Session:
            def client(self, service: str, **kwargs: Any) -> FakeKms:
                time.sleep(0.05)
                outer.created.append({"service": service, **kwargs})
                client = FakeKms("p256")
                outer.clients.append(client)
                return client

        self.session = type("session", (), {"Session": Session})


async def test_client_is_created_once_across_threads() -> None:
    signer = AwsKmsSigner(KEY_ARN, max_concurrency=8)
    fake = FakeBoto3()
    signer._boto3 = fake
    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(signer.sign, f"a.{i}".encode())
    assert len(fake.created) == 1
    created = fake.created[0]
    assert created["service"] == "kms"
    assert created["region_name"] == REGION  # taken from the key ARN
    assert created["endpoint_url"] is None
    await signer.aclose()
    assert fake.clients[0].closed


async def test_concurrency_is_limited() -> None:
    client = FakeKms("p256")
    signer = AwsKmsSigner(ALIAS, client=client, max_concurrency=2)
    await signer.describe()
    client.delay = 0.02
    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(signer.sign, f"a.{i}".encode())
    assert len([c for c in client.calls if c[0] == "Sign"]) == 8
    assert client.max_in_flight <= 2


async def test_aclose_leaves_a_passed_in_client_open() -> None:
    client = FakeKms("p256")
    signer = AwsKmsSigner(ALIAS, client=client)
    await signer.describe()
    await signer.aclose()
    assert not client.closed
    with pytest.raises(SigningError, match="closed") as caught:
        await signer.sign(b"a.b")
    assert not caught.value.retryable


async def test_alias_is_pinned_to_the_described_key() -> None:
    client = FakeKms("p256", key_id=KEY_ARN)
    signer = AwsKmsSigner(ALIAS, client=client)
    await signer.sign(b"a.b")
    assert [(name, params["KeyId"]) for name, params in client.calls] == [
        ("GetPublicKey", ALIAS),
        ("Sign", KEY_ARN),
    ]


# -- construction and URIs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_id",
    [
        KEY_UUID,
        KEY_ARN,
        ALIAS,
        f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/payments-m2m",
        "mrk-1234abcd12ab34cd56ef1234567890ab",
        "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/mrk-1234",
    ],
)
def test_accepted_key_ids(key_id: str) -> None:
    assert AwsKmsSigner(key_id, client=FakeKms("p256")).key_name == key_id


@pytest.mark.parametrize(
    "key_id",
    [
        "",
        " alias/x",
        "alias/",
        "payments/m2m",
        "arn:aws:kms:eu-west-1:111122223333:secret/x",
        "arn:aws:s3:::bucket/key",
        "arn:aws:kms::111122223333:key/abc",
        123,
    ],
)
def test_rejected_key_ids(key_id: Any) -> None:
    with pytest.raises(ConfigurationError, match="AWS KMS key"):
        AwsKmsSigner(key_id)


def test_region_comes_from_the_arn_and_must_agree() -> None:
    assert AwsKmsSigner(KEY_ARN)._region == REGION
    with pytest.raises(ConfigurationError, match="does not match"):
        AwsKmsSigner(KEY_ARN, region="us-east-1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"client": object(), "region": "eu-west-1"}, "not both"),
        ({"client": object(), "endpoint_url": "http://127.0.0.1:1"}, "not both"),
        ({"algorithm": "HS256"}, "unknown JWS algorithm 'HS256'"),
        ({"key_id": ""}, "key_id must"),
        ({"endpoint_url": "ftp://x"}, "endpoint_url must"),
        ({"max_concurrency": 0}, "max_concurrency must"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AwsKmsSigner(ALIAS, **kwargs)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingExtraError, match=r"keyless-m2m\[aws\]"):
        AwsKmsSigner(ALIAS)


def test_importing_signers_does_not_import_boto3() -> None:
    code = (
        "import sys, keyless_m2m.signers; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    )
    run_python(code)


@pytest.mark.parametrize(
    ("uri", "key", "endpoint", "region"),
    [
        ("awskms:///alias/payments-m2m", ALIAS, None, None),
        (f"awskms:///{KEY_ARN}", KEY_ARN, None, REGION),
        (f"awskms:///{KEY_UUID}", KEY_UUID, None, None),
        ("awskms://127.0.0.1:4566/alias/x", "alias/x", "http://127.0.0.1:4566", None),
        ("awskms://localhost:5000/alias/x", "alias/x", "http://localhost:5000", None),
        ("awskms://[::1]:5000/alias/x", "alias/x", "http://[::1]:5000", None),
        ("awskms://kms.internal.example/alias/x", "alias/x", "https://kms.internal.example", None),
        ("awskms://vpce.example:8443/alias/x", "alias/x", "https://vpce.example:8443", None),
    ],
)
def test_from_uri(uri: str, key: str, endpoint: str | None, region: str | None) -> None:
    signer = signer_from_uri(uri)
    assert isinstance(signer, AwsKmsSigner)
    assert signer.key_name == key
    assert signer._endpoint_url == endpoint
    assert signer._region == region


def test_from_uri_options() -> None:
    signer = signer_from_uri("awskms:///alias/x", region="eu-central-1", algorithm="PS256", key_id="kid-1")
    assert isinstance(signer, AwsKmsSigner)
    assert signer._region == "eu-central-1"
    assert signer._kid == "kid-1"
    assert signer._requested_alg == "PS256"


async def test_kid_is_a_deprecated_name_of_key_id(kms: Any, stub: Any) -> None:
    expect_describe(stub, "p256", ALIAS)
    with pytest.warns(DeprecationWarning, match=r"AwsKmsSigner\(kid=\.\.\.\) is deprecated; use key_id="):
        signer = AwsKmsSigner(ALIAS, client=kms, kid="payments-2025")
    description = await signer.describe()
    assert description.key_id == description.public_jwk["kid"] == "payments-2025"
    with pytest.warns(DeprecationWarning, match="use key_id="):
        from_uri = AwsKmsSigner.from_uri("awskms:///alias/x", kid="kid-2")
    assert from_uri._kid == "kid-2"


def test_kms_key_given_as_key_id_still_works_with_a_warning() -> None:
    # The old signature named the KMS key ``key_id``; a keyword call keeps its meaning.
    with pytest.warns(DeprecationWarning, match="pass the KMS key as the first argument"):
        signer = AwsKmsSigner(key_id=ALIAS, client=FakeKms("p256"))
    assert signer.key_name == ALIAS
    assert signer._kid is None


@pytest.mark.parametrize(
    "uri",
    [
        "awskms://",
        "awskms:///",
        "awskms://127.0.0.1:4566",
        "awskms://arn:aws:kms:eu-west-1:111122223333:key/abc",  # two slashes: the ARN became a host
        "awskms:///alias/x?region=eu-west-1",
        "awskms://user:pw@127.0.0.1:4566/alias/x",
        "awskms://127.0.0.1:notaport/alias/x",
    ],
)
def test_bad_uris(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="awskms"):
        signer_from_uri(uri)


def test_uri_host_and_endpoint_url_conflict() -> None:
    with pytest.raises(ConfigurationError, match="endpoint"):
        signer_from_uri("awskms://127.0.0.1:4566/alias/x", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="not both"):
        signer_from_uri("awskms:///alias/x", kid="a", key_id="b")


def test_repr_names_the_key_only() -> None:
    signer = AwsKmsSigner(ALIAS, client=FakeKms("p256"))
    assert repr(signer) == "AwsKmsSigner(key='alias/payments-m2m', alg=?)"


@pytest.mark.parametrize("url", ["https://kms.internal:99999", "http://127.0.0.1:port", "https://"])
def test_an_endpoint_url_with_a_bad_port_or_no_host_is_refused(url: str) -> None:
    # issue 20: a port out of range was accepted until boto3 tried to connect.
    with pytest.raises(ConfigurationError, match="endpoint_url"):
        AwsKmsSigner(ALIAS, endpoint_url=url, region="eu-west-1")
