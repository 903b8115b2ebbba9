"""Fuzz what KMS backends answer: signatures of the wrong length, DER garbage, broken
encodings. Through the JOSE helpers every backend uses, and through the AWS (botocore
``Stubber``, ``tests/aws_stubs.py``), GCP (a stand-in client with real proto messages,
``tests/gcp_stubs.py``) and Vault (a fake hvac client, ``tests/vault_stubs.py``) signers.
Property: a signature of exactly the JWS size for the algorithm, or a ``SigningError``
that names the key and carries no credential."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyless_m2m import SigningError
from keyless_m2m._jose import ALGORITHMS, check_signature_length, der_to_raw
from keyless_m2m.signers import Signer
from tests import aws_stubs
from tests.fuzz.helpers import assert_clean, run_bounded
from tests.helpers import make_key, require_module

SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

der_like = st.one_of(
    st.binary(max_size=160),
    # structurally valid DER with out-of-range, zero, negative or huge integers
    st.builds(
        encode_dss_signature,
        st.integers(min_value=0, max_value=2**600),
        st.integers(min_value=0, max_value=2**600),
    ),
    st.builds(
        lambda b, cut: encode_dss_signature(2**255 + 1, 2**255 + 3)[:cut] + b,
        st.binary(max_size=4),
        st.integers(0, 72),
    ),
    st.just(b"\x30\x80" + b"\x02\x01\x01" * 2 + b"\x00\x00"),  # indefinite length
)


def _expected_length(alg: str) -> int | None:
    a = ALGORITHMS[alg]
    if a.family == "EC":
        return 2 * a.coordinate_size
    if a.family == "OKP":
        return 64
    return None


def _assert_jws_length(signature: bytes, alg: str) -> None:
    expected = _expected_length(alg)
    assert len(signature) == expected if expected is not None else len(signature) >= 256


def _describe_and_sign(signer: Signer) -> bytes:
    """``describe()`` then ``sign()``, as the token endpoint does, on a bounded loop."""

    async def sign() -> bytes:
        await signer.describe()
        return await signer.sign(b"header.claims")

    return run_bounded(sign)


@given(der_like, st.sampled_from(sorted(SIZES)))
def test_der_to_raw(der: bytes, alg: str) -> None:
    try:
        raw = der_to_raw(der, SIZES[alg])
    except SigningError as exc:
        assert_clean(exc, [])
    else:
        assert len(raw) == 2 * SIZES[alg]
        assert raw[: SIZES[alg]] != bytes(SIZES[alg]) and raw[SIZES[alg] :] != bytes(SIZES[alg])


@given(st.binary(max_size=700), st.sampled_from(sorted(ALGORITHMS)))
def test_check_signature_length(signature: bytes, alg: str) -> None:
    expected = _expected_length(alg)
    try:
        assert check_signature_length(ALGORITHMS[alg], signature, key="k") == signature
    except SigningError as exc:
        assert "k" in str(exc) and exc.key == "k"  # noqa: PT017 - either outcome is allowed
        assert expected is None or len(signature) != expected
    else:
        assert len(signature) == expected if expected is not None else len(signature) >= 256


# -- AWS KMS: answers from botocore's Stubber on a real boto3 client ------------------------------


@pytest.fixture(scope="module")
def kms() -> Iterator[Any]:
    require_module("boto3", reason="the aws extra is not installed")
    client = aws_stubs.kms_client()
    yield client  # one real client for every example, a fresh Stubber for each
    client.close()


@fixture_ok
@given(st.one_of(der_like, st.binary(max_size=600)), st.sampled_from(["p256", "p384", "rsa"]))
def test_aws_kms_signatures(kms: Any, signature: bytes, kind: str) -> None:
    from botocore.stub import Stubber

    from keyless_m2m.signers import AwsKmsSigner

    alg = {"p256": "ES256", "p384": "ES384", "rsa": "RS256"}[kind]
    key_arn = aws_stubs.KEY_ARN
    with Stubber(kms) as stub:
        aws_stubs.expect_describe(stub, kind)
        stub.add_response(
            "sign", {"KeyId": key_arn, "Signature": signature, "SigningAlgorithm": aws_stubs.KMS_ALG[alg]}
        )
        signer = AwsKmsSigner(key_arn, client=kms, algorithm=alg)
        try:
            raw = _describe_and_sign(signer)
        except SigningError as exc:
            assert_clean(exc, [aws_stubs.ACCESS_KEY_ID, aws_stubs.SECRET_ACCESS_KEY])
        else:
            _assert_jws_length(raw, alg)
        run_bounded(signer.aclose)


# -- GCP KMS: a stand-in client returning real proto-plus messages --------------------------------


@pytest.fixture(scope="module")
def gcp() -> None:
    require_module("google.cloud.kms_v1", reason="the gcp extra is not installed")


@fixture_ok
@given(der_like, st.sampled_from(["good", "bad", "missing"]), st.booleans())
def test_gcp_kms_signatures(gcp: None, signature: bytes, crc: str, verified: bool) -> None:
    import google_crc32c
    from google.cloud import kms_v1

    from keyless_m2m.signers import GcpKmsSigner
    from tests.gcp_stubs import NAME, StubClient

    class Fuzzed(StubClient):
        def asymmetric_sign(self, *, request: Any, **kwargs: Any) -> Any:
            value = google_crc32c.value(signature)
            return kms_v1.AsymmetricSignResponse(
                signature=signature,
                signature_crc32c={"good": value, "bad": (value + 1) % 2**32, "missing": None}[crc],
                verified_digest_crc32c=verified,
                name=self.name,
            )

    signer = GcpKmsSigner(NAME, client=Fuzzed(make_key("p256"), "EC_SIGN_P256_SHA256"))
    try:
        raw = _describe_and_sign(signer)
    except SigningError as exc:
        assert_clean(exc, [])
        assert exc.key == signer.key_name  # noqa: PT017 - either outcome is allowed
    else:
        assert len(raw) == 64 and crc == "good" and verified
    run_bounded(signer.aclose)


# -- Vault transit: a fake hvac client answering with fuzzed signature strings --------------------


@pytest.fixture(scope="module")
def vault() -> None:
    require_module("hvac", reason="the vault extra is not installed")


vault_signatures = st.one_of(
    st.text(max_size=120),
    st.builds(
        lambda v, b: f"vault:v{v}:{b}",
        st.integers(-2, 5),
        st.binary(max_size=140).map(lambda x: base64.urlsafe_b64encode(x).decode()),
    ),
    st.builds(lambda b: f"vault:v1:{b}", st.text(max_size=100)),
    st.integers(),
    st.none(),
)


@fixture_ok
@given(
    vault_signatures, st.sampled_from([("ecdsa-p256", "ES256"), ("ed25519", "EdDSA"), ("rsa-2048", "PS256")])
)
def test_vault_transit_signatures(vault: None, signature: Any, case: tuple[str, str]) -> None:
    from keyless_m2m.signers.vault import VaultTransitSigner
    from tests.vault_stubs import KEY_FOR_TYPE, TOKEN, FakeClient  # imports hvac

    client = FakeClient()
    key_type, alg = case
    client.transit.add(key_type, key_type, make_key(KEY_FOR_TYPE[key_type]))
    client.transit.response_patch = {"signature": signature}
    signer = VaultTransitSigner(key_type, client=client, algorithm=alg)
    try:
        raw = _describe_and_sign(signer)
    except SigningError as exc:
        assert_clean(exc, [TOKEN])
    else:
        _assert_jws_length(raw, alg)
    run_bounded(signer.aclose)
