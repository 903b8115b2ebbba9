"""AwsKmsSigner against an AWS double over HTTP: a real ``moto_server`` process (the
default), or LocalStack, whose KMS is its own implementation (``--aws-double=localstack``,
which ``nox -s localstack`` passes; tests/localstack_server.py), and moto in-process.

The same tests run against both. What one double gets wrong is marked
``quirk_of(double)``: a strict xfail against that double, an ordinary test against the
other, so it starts failing the day the double behaves like AWS. moto signs ``DIGEST``
messages wrongly (it hashes them again), uses the maximum PSS salt (its PS256 signatures
do not verify with the salt = hash length JWS requires) and signs with disabled keys;
LocalStack does all three like AWS. Neither has an Ed25519 key spec (``ECC_NIST_EDWARDS25519``):
that path is covered by request shape in ``tests/unit/signers/test_aws.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_der_public_key
from jwcrypto import jwk as jwcrypto_jwk

from keyless_m2m import ConfigurationError, PrivateKeyJWT, SigningError, TokenManager
from keyless_m2m.signers import AwsKmsSigner, signer_from_uri
from keyless_m2m.signers.aws import _CLIENTS as aws_clients
from tests.aws_faults import KmsSignFaults
from tests.contract import SignerContract, sign_jws
from tests.helpers import missing_server, require_module, verify_jws
from tests.localstack_server import LocalStackServer
from tests.moto_server import MotoServer, dummy_aws_environment
from tests.processes import free_port
from tests.retries import (
    ATTEMPTS,
    Hang,
    assert_cancel_releases_the_caller,
    failing_sign,
    failing_token_request,
)

# Skip without the aws extra, except under CI=true (CI installs it: missing is a failure).
boto3 = require_module("boto3", reason="the aws extra (boto3) is not installed")
Config = require_module("botocore.config").Config

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

#: The process the tests talk to: both have ``endpoint``, ``port`` and ``pid``.
KmsServer = MotoServer | LocalStackServer

REGION = "us-east-1"
SPEC_FOR_ALG = {
    "RS256": "RSA_2048",
    "ES256": "ECC_NIST_P256",
    "ES384": "ECC_NIST_P384",
    "ES512": "ECC_NIST_P521",
}
RSA_ALIAS = "alias/keyless-m2m-rsa"
ES256_ALIAS = "alias/keyless-m2m-es256"


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy credentials and a region, and no user AWS config leaking into the tests."""
    with pytest.MonkeyPatch.context() as mp:
        dummy_aws_environment(mp, tmp_path_factory.mktemp("aws"), REGION)
        yield


@pytest.fixture(scope="module")
def kms_server(aws_env: None, aws_double: str, request: pytest.FixtureRequest) -> KmsServer:
    """The session's ``moto_server`` or ``localstack_server`` (``--aws-double``;
    tests/integration/signers/conftest.py), with this module's dummy credentials and region."""
    server: KmsServer = request.getfixturevalue(f"{aws_double}_server")
    return server


@pytest.fixture(scope="module")
def kms(kms_server: KmsServer) -> Iterator[Any]:
    client = boto3.session.Session().client("kms", region_name=REGION, endpoint_url=kms_server.endpoint)
    yield client
    client.close()


def create_key(kms: Any, spec: str, usage: str = "SIGN_VERIFY") -> str:
    return str(kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"])


@pytest.fixture(scope="module")
def kms_keys(kms: Any) -> dict[str, str]:
    """Key spec -> key ARN, created through the real boto3 client."""
    keys = {spec: create_key(kms, spec) for spec in SPEC_FOR_ALG.values()}
    kms.create_alias(AliasName=RSA_ALIAS, TargetKeyId=keys["RSA_2048"])
    kms.create_alias(AliasName=ES256_ALIAS, TargetKeyId=keys["ECC_NIST_P256"])
    return keys


def jwk_from_kms(kms: Any, key_id: str, alg: str) -> dict[str, Any]:
    """The public JWK computed without keyless-m2m: GetPublicKey DER -> PyJWT -> jwcrypto kid."""
    der = kms.get_public_key(KeyId=key_id)["PublicKey"]
    public = load_der_public_key(der)
    algorithm: Any = jwt.algorithms.get_default_algorithms()[alg]
    full: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
    members = {k: v for k, v in full.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    members["kid"] = jwcrypto_jwk.JWK(**members).thumbprint()
    members["alg"] = alg
    return members


# -- the shared contract over HTTP -------------------------------------------------------------


@pytest.fixture(params=list(SPEC_FOR_ALG))
def expected_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def signer(
    anyio_backend: Any, expected_alg: str, kms_server: KmsServer, kms_keys: dict[str, str]
) -> AsyncIterator[AwsKmsSigner]:
    signer = AwsKmsSigner(kms_keys[SPEC_FOR_ALG[expected_alg]], endpoint_url=kms_server.endpoint)
    yield signer
    await signer.aclose()


class TestAwsKmsSignerOnKmsDouble(SignerContract):
    async def test_public_jwk_matches_kms(self, signer: AwsKmsSigner, expected_alg: str, kms: Any) -> None:
        description = await signer.describe()
        independent = jwk_from_kms(kms, signer.key_name, expected_alg)
        assert dict(description.public_jwk) == {**independent, "use": "sig"}


# -- aliases, URIs, errors ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["alias", "alias-arn", "key-id"])
async def test_key_forms_resolve_to_the_same_key(
    form: str, kms_server: KmsServer, kms: Any, kms_keys: dict[str, str]
) -> None:
    arn = kms_keys["RSA_2048"]
    key_id = {
        "alias": RSA_ALIAS,
        "alias-arn": arn.split(":key/")[0] + ":" + RSA_ALIAS,
        "key-id": arn.rsplit("/", 1)[1],
    }[form]
    signer = AwsKmsSigner(key_id, endpoint_url=kms_server.endpoint)
    try:
        description = await signer.describe()
        assert description.algorithm == "RS256"
        assert description.key_id == jwk_from_kms(kms, arn, "RS256")["kid"]
        claims = {"form": form}
        assert verify_jws(await sign_jws(signer, claims), dict(description.public_jwk)) == claims
    finally:
        await signer.aclose()


async def test_alias_is_pinned_to_the_described_key(kms_server: KmsServer, kms: Any) -> None:
    first, second = create_key(kms, "ECC_NIST_P256"), create_key(kms, "ECC_NIST_P256")
    alias = f"alias/keyless-m2m-rotate-{os.getpid()}-{time.monotonic_ns()}"
    kms.create_alias(AliasName=alias, TargetKeyId=first)
    signer = AwsKmsSigner(alias, endpoint_url=kms_server.endpoint)
    try:
        described = await signer.describe()
        # Rotation by re-pointing the alias. By key id: LocalStack stores a key ARN given to
        # UpdateAlias as it is and then resolves the alias to no key (AWS takes either).
        kms.update_alias(AliasName=alias, TargetKeyId=second.rsplit("/", 1)[1])
        token = await sign_jws(signer, {"n": 1})
        assert verify_jws(token, dict(described.public_jwk)) == {"n": 1}
    finally:
        await signer.aclose()
    fresh = AwsKmsSigner(alias, endpoint_url=kms_server.endpoint)
    try:
        assert (await fresh.describe()).key_id == jwk_from_kms(kms, second, "ES256")["kid"]
    finally:
        await fresh.aclose()


async def test_signer_from_uri_with_custom_endpoint(kms_server: KmsServer, kms_keys: dict[str, str]) -> None:
    signer = signer_from_uri(f"awskms://127.0.0.1:{kms_server.port}/{ES256_ALIAS}")
    try:
        description = await signer.describe()
        assert description.algorithm == "ES256"
        assert verify_jws(await sign_jws(signer, {"uri": True}), dict(description.public_jwk)) == {
            "uri": True
        }
    finally:
        await signer.aclose()


async def test_unknown_alias_is_not_found(kms_server: KmsServer) -> None:
    signer = AwsKmsSigner("alias/keyless-m2m-does-not-exist", endpoint_url=kms_server.endpoint)
    try:
        with pytest.raises(SigningError) as caught:
            await signer.describe()
        assert caught.value.code == "NotFoundException"
        assert not caught.value.retryable
        assert "alias/keyless-m2m-does-not-exist" in str(caught.value)
    finally:
        await signer.aclose()


@pytest.mark.parametrize(
    ("spec", "usage"), [("ECC_SECG_P256K1", "SIGN_VERIFY"), ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")]
)
async def test_keys_without_a_jws_algorithm(kms_server: KmsServer, kms: Any, spec: str, usage: str) -> None:
    arn = create_key(kms, spec, usage)
    signer = AwsKmsSigner(arn, endpoint_url=kms_server.endpoint)
    try:
        with pytest.raises(ConfigurationError, match=spec):
            await signer.describe()
    finally:
        await signer.aclose()


@pytest.mark.quirk_of(
    "moto",
    raises=pytest.fail.Exception,
    reason="moto (5.x) signs with disabled keys; AWS (and LocalStack) answers DisabledException",
)
async def test_disabled_key_is_not_retryable(kms_server: KmsServer, kms: Any) -> None:
    arn = create_key(kms, "ECC_NIST_P256")
    signer = AwsKmsSigner(arn, endpoint_url=kms_server.endpoint)
    try:
        await signer.describe()
        kms.disable_key(KeyId=arn.rsplit("/", 1)[1])  # moto answers 500 to DisableKey with an ARN
        with pytest.raises(SigningError) as caught:
            await signer.sign(b"a.b")
        assert caught.value.code == "DisabledException"
        assert not caught.value.retryable
    finally:
        await signer.aclose()


async def test_unreachable_endpoint_is_retryable(aws_env: None) -> None:
    port = free_port()  # nothing listens here
    client = boto3.session.Session().client(
        "kms",
        region_name=REGION,
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2),
    )
    signer = AwsKmsSigner(ES256_ALIAS, client=client)
    try:
        with pytest.raises(SigningError) as caught:
            await signer.describe()
        assert caught.value.retryable
        assert caught.value.code == "EndpointConnectionError"
    finally:
        await signer.aclose()
        client.close()


@pytest.mark.quirk_of(
    "moto",
    raises=jwt.InvalidSignatureError,
    reason="moto (5.x) hashes a MessageType=DIGEST message again before signing it",
)
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_long_signing_input_is_signed_as_a_digest(
    alg: str, kms_server: KmsServer, kms_keys: dict[str, str]
) -> None:
    # Over 4096 bytes the signer hashes locally and sends MessageType=DIGEST.
    signer = AwsKmsSigner(kms_keys[SPEC_FOR_ALG[alg]], endpoint_url=kms_server.endpoint)
    try:
        description = await signer.describe()
        claims = {"padding": "x" * 5000}
        assert verify_jws(await sign_jws(signer, claims), dict(description.public_jwk)) == claims
    finally:
        await signer.aclose()


@pytest.mark.quirk_of(
    "moto",
    raises=jwt.InvalidSignatureError,
    reason="moto (5.x) signs RSASSA-PSS with the maximum salt length; JWS needs salt = hash length",
)
@pytest.mark.parametrize("alg", ["PS256", "PS512"])
async def test_pss_signatures_verify(alg: str, kms_server: KmsServer, kms_keys: dict[str, str]) -> None:
    signer = AwsKmsSigner(kms_keys["RSA_2048"], endpoint_url=kms_server.endpoint, algorithm=alg)
    try:
        description = await signer.describe()
        assert description.algorithm == alg
        assert verify_jws(await sign_jws(signer, {"pss": alg}), dict(description.public_jwk)) == {"pss": alg}
    finally:
        await signer.aclose()


# -- one owner of retries: one KMS call per sign(), the token endpoint retries -------------------


@pytest.fixture
async def faulty(kms_server: KmsServer, kms: Any) -> AsyncIterator[tuple[AwsKmsSigner, KmsSignFaults]]:
    """A signer with the client it builds itself (its retry settings are under test), and
    AWS's error answers injected into that client's Sign calls."""
    signer = AwsKmsSigner(create_key(kms, "ECC_NIST_P256"), endpoint_url=kms_server.endpoint)
    await signer.describe()
    # The faults go on the client the signer built: it must be this signer's alone (signers
    # share clients), so that they leave with it at aclose().
    assert signer._client_key is not None and aws_clients.users(signer._client_key) == 1
    faults = KmsSignFaults()
    faults.install(signer._client)  # the boto3 client the signer made
    yield signer, faults
    await signer.aclose()


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("ThrottlingException", True), ("KMSInternalException", True), ("AccessDeniedException", False)],
)
async def test_one_kms_call_per_failing_sign(
    faulty: tuple[AwsKmsSigner, KmsSignFaults], code: str, retryable: bool
) -> None:
    signer, faults = faulty
    faults.fault = (500 if code == "KMSInternalException" else 400, code)
    error, calls = await failing_sign(signer, lambda: faults.calls)
    assert (error.code, error.retryable) == (code, retryable)
    assert calls == 1  # botocore does not retry; the token endpoint decides


@pytest.mark.parametrize(("code", "retryable"), [("ThrottlingException", True), ("DisabledException", False)])
async def test_the_token_endpoint_owns_the_retries(
    faulty: tuple[AwsKmsSigner, KmsSignFaults], code: str, retryable: bool
) -> None:
    signer, faults = faulty
    faults.fault = (400, code)
    error, calls = await failing_token_request(signer, lambda: faults.calls)
    assert (error.code, error.retryable) == (code, retryable)
    assert calls == (ATTEMPTS if retryable else 1)


def test_the_built_client_has_no_retries_and_finite_timeouts(aws_env: None) -> None:
    from keyless_m2m.signers import aws

    signer = AwsKmsSigner("alias/x", endpoint_url="http://127.0.0.1:1")
    client = aws._build_client(signer._shared_key())  # what the signer's first call builds
    config = client.meta.config
    assert config.retries["total_max_attempts"] == 1
    assert 0 < config.connect_timeout <= 10 and 0 < config.read_timeout <= 30
    client.close()


async def test_a_given_client_keeps_its_own_retry_settings(kms_server: KmsServer, kms: Any) -> None:
    # A client the user built is used as it is: its retries multiply with the endpoint's.
    client = boto3.session.Session().client(
        "kms",
        region_name=REGION,
        endpoint_url=kms_server.endpoint,
        config=Config(retries={"mode": "standard", "total_max_attempts": 2}),
    )
    signer = AwsKmsSigner(create_key(kms, "ECC_NIST_P256"), client=client)
    await signer.describe()
    faults = KmsSignFaults()
    faults.install(client)
    faults.fault = (400, "ThrottlingException")
    try:
        _, calls = await failing_sign(signer, lambda: faults.calls)
        assert calls == 2
    finally:
        await signer.aclose()
        client.close()


async def test_cancellation_releases_a_caller_stuck_in_boto3(kms_server: KmsServer, kms: Any) -> None:
    signer = AwsKmsSigner(create_key(kms, "ECC_NIST_P256"), endpoint_url=kms_server.endpoint)
    await signer.describe()
    assert signer._client_key is not None and aws_clients.users(signer._client_key) == 1
    hang = Hang()

    def before_send(**kwargs: Any) -> None:
        hang()  # a KMS endpoint that does not answer, inside botocore's send

    signer._client.meta.events.register("before-send.kms.Sign", before_send)
    try:
        await assert_cancel_releases_the_caller(lambda: signer.sign(b"header.claims"), hang)
    finally:
        await signer.aclose()


# -- in-process moto, as users' own tests would use it -------------------------------------------


async def test_in_process_mock_aws(aws_env: None, aws_double: str) -> None:
    if aws_double != "moto":
        pytest.skip("moto in-process, no server: it runs with --aws-double=moto (the default)")
    from moto import mock_aws

    with mock_aws():
        client = boto3.session.Session().client("kms", region_name=REGION)
        arn = create_key(client, "ECC_NIST_P384")
        signer = AwsKmsSigner(arn)  # its own boto3 client, created in a worker thread
        try:
            description = await signer.describe()
            assert description.algorithm == "ES384"
            assert description.key_id == jwk_from_kms(client, arn, "ES384")["kid"]
            assert verify_jws(await sign_jws(signer, {"m": 1}), dict(description.public_jwk)) == {"m": 1}
        finally:
            await signer.aclose()
            client.close()


# -- end to end: tokens from the embedded server and oidc-provider, signed by a KMS-double key ----


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_token_from_the_embedded_authorization_server(
    alg: str, kms_server: KmsServer, kms: Any, kms_keys: dict[str, str]
) -> None:
    from keyless_m2m.testing.authorization_server import AuthorizationServer

    public_jwk = jwk_from_kms(kms, kms_keys[SPEC_FOR_ALG[alg]], alg)  # computed without our code
    assertions: list[str] = []
    signer = AwsKmsSigner({"RS256": RSA_ALIAS, "ES256": ES256_ALIAS}[alg], endpoint_url=kms_server.endpoint)
    try:
        with AuthorizationServer(expires_in=600) as server:
            server.register_client("aws-kms", public_jwk=public_jwk, scopes=["pockets.read"])
            server.on_request = lambda form: assertions.extend(form.get("client_assertion", []))
            async with TokenManager(server.token_endpoint, PrivateKeyJWT("aws-kms", signer)) as tokens:
                token = await tokens.get_token(scope="pockets.read")
    finally:
        await signer.aclose()
    assert server.issued == [token.value]
    assert token.scope == "pockets.read"
    (assertion,) = assertions
    # The assertion the server accepted, verified again by PyJWT with the KMS's own public key.
    assert jwt.get_unverified_header(assertion)["kid"] == public_jwk["kid"]
    claims = verify_jws(assertion, public_jwk, audience=server.token_endpoint)
    assert claims["iss"] == claims["sub"] == "aws-kms"


@dataclass
class Provider:
    token_endpoint: str
    client_id: str


@pytest.fixture(scope="module")
def oidc_with_kms_client(kms: Any, kms_keys: dict[str, str]) -> Iterator[Provider]:
    from tests.oidc_provider import harness

    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    client = {
        "client_id": "aws-kms-es256",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": {"keys": [jwk_from_kms(kms, kms_keys["ECC_NIST_P256"], "ES256")]},
        "scope": "pockets.read",
    }
    with harness.start_oidc_provider([client], ["pockets.read"], access_token_ttl=600) as op:
        yield Provider(op.token_endpoint, "aws-kms-es256")


async def test_token_from_oidc_provider(kms_server: KmsServer, oidc_with_kms_client: Provider) -> None:
    signer = AwsKmsSigner(ES256_ALIAS, endpoint_url=kms_server.endpoint)
    auth = PrivateKeyJWT(oidc_with_kms_client.client_id, signer)
    try:
        async with TokenManager(oidc_with_kms_client.token_endpoint, auth, scope="pockets.read") as tokens:
            token = await tokens.get_token()
            assert token.value
            assert token.token_type == "Bearer"
            assert token.scope == "pockets.read"
            assert tokens.stats.signatures == 1
    finally:
        await signer.aclose()
