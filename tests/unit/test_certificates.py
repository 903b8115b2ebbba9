"""``keyless_m2m.certificates`` with local keys: every JWS algorithm gives a certificate that
cryptography and openssl verify, signed by exactly one ``sign()``; the fields, the PSS
parameters, the thumbprints (against hashlib), the PEM, and the refusals."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from keyless_m2m.certificates import certificate_pem, certificate_thumbprint, self_signed_certificate
from keyless_m2m.errors import ConfigurationError, SigningError
from keyless_m2m.signers import KeyDescription, LocalSigner
from keyless_m2m.testing.signers import InMemorySigner
from tests.certificate_checks import check_certificate
from tests.helpers import ALG_KEYS, make_key, pem_of

pytestmark = pytest.mark.anyio

SUBJECT = "CN=my-client,O=Example"
HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def local(alg: str) -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key(ALG_KEYS[alg])), algorithm=alg)


@pytest.mark.parametrize("alg", list(ALG_KEYS))
async def test_every_algorithm_verifies(alg: str) -> None:
    signer = local(alg)
    description = await signer.describe()
    cert = await self_signed_certificate(signer, subject=SUBJECT, days=30)
    check_certificate(cert, description.public_jwk, subject=SUBJECT)
    if alg == "EdDSA":
        assert cert.signature_hash_algorithm is None
        assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ED25519
    else:
        hash_type = HASHES[alg[2:]]
        assert isinstance(cert.signature_hash_algorithm, hash_type)
    if alg.startswith("PS"):
        # What the signer does (RFC 7518 section 3.5): MGF1 with the same hash, salt = hash length.
        pss = cert.signature_algorithm_parameters
        assert isinstance(pss, padding.PSS)
        assert isinstance(pss.mgf, padding.MGF1) and isinstance(pss.mgf._algorithm, HASHES[alg[2:]])
        assert pss._salt_length == int(alg[2:]) // 8  # bytes of the hash


async def test_the_fields() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    signer = local("ES256")
    cert = await self_signed_certificate(signer, subject=SUBJECT, days=90, not_before=start)
    assert cert.version == x509.Version.v3
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == start.replace(microsecond=0) + timedelta(days=90)
    assert 0 < cert.serial_number < 2**159
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(make_key("p256").public_key())
    assert len(cert.extensions) == 3


async def test_defaults_and_fresh_serials() -> None:
    signer = local("EdDSA")
    before = datetime.now(UTC)
    first = await self_signed_certificate(signer)
    second = await self_signed_certificate(signer)
    assert first.subject.rfc4514_string() == "CN=keyless-m2m"
    assert first.serial_number != second.serial_number
    # valid from a few minutes ago (clocks a little behind), for 365 days
    assert before - timedelta(minutes=6) < first.not_valid_before_utc <= before
    assert first.not_valid_after_utc - first.not_valid_before_utc == timedelta(days=365)


async def test_dates_after_2049_are_generalized_time() -> None:
    start = datetime(2049, 6, 1, tzinfo=UTC)
    cert = await self_signed_certificate(local("ES256"), days=3650, not_before=start)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + timedelta(days=3650)
    check_certificate(
        cert,
        (await local("ES256").describe()).public_jwk,
        subject="CN=keyless-m2m",
        at=start + timedelta(days=1),
    )


async def test_exactly_one_signature_and_no_local_private_key() -> None:
    signer = InMemorySigner("PS256")
    cert = await self_signed_certificate(signer, subject="CN=svc")
    assert signer.sign_calls == 1 and signer.signatures == 1
    check_certificate(cert, signer.public_jwk, subject="CN=svc")


class _SignsOtherwise:
    """A signer that says RS256 and signs PS256 with the same key (a KMS that pads otherwise,
    as moto's maximum-length PSS salt does)."""

    def __init__(self) -> None:
        self._described, self._signing = local("RS256"), local("PS256")

    async def describe(self) -> KeyDescription:
        return await self._described.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        return await self._signing.sign(signing_input)

    async def aclose(self) -> None:
        pass


async def test_a_signature_that_does_not_verify_is_a_signing_error() -> None:
    with pytest.raises(SigningError, match="does not verify"):
        await self_signed_certificate(_SignsOtherwise())


@pytest.mark.parametrize("days", [0, -1, 3651, 10**6])
async def test_days_out_of_range(days: int) -> None:
    with pytest.raises(ConfigurationError, match="between 1 and 3650"):
        await self_signed_certificate(local("ES256"), days=days)


@pytest.mark.parametrize("days", ["365", 365.0, True, None])
async def test_days_of_the_wrong_type(days: Any) -> None:
    with pytest.raises(TypeError, match="days must be an integer"):
        await self_signed_certificate(local("ES256"), days=days)


@pytest.mark.parametrize("subject", ["not a name", "CN", "=x", "XYZ=1"])
async def test_subject_that_is_not_rfc4514(subject: str) -> None:
    with pytest.raises(ConfigurationError, match="RFC 4514"):
        await self_signed_certificate(local("ES256"), subject=subject)


async def test_other_subject_refusals() -> None:
    with pytest.raises(ConfigurationError, match="at least one attribute"):
        await self_signed_certificate(local("ES256"), subject="")
    with pytest.raises(TypeError, match="RFC 4514 string"):
        await self_signed_certificate(local("ES256"), subject=b"CN=x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await self_signed_certificate(local("ES256"), not_before=datetime(2026, 1, 1))


async def test_refused_arguments_cost_no_signature() -> None:
    signer = InMemorySigner("ES256")
    with pytest.raises(ConfigurationError):
        await self_signed_certificate(signer, days=0)
    assert signer.sign_calls == 0 and signer.describes == 0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_thumbprints_match_hashlib() -> None:
    cert = await self_signed_certificate(local("ES384"))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certificate_thumbprint(cert) == _b64url(hashlib.sha256(der).digest())
    assert certificate_thumbprint(cert, "sha256") == certificate_thumbprint(cert)
    assert certificate_thumbprint(cert, "sha1") == _b64url(hashlib.sha1(der).digest())  # noqa: S324
    assert len(certificate_thumbprint(cert)) == 43 and len(certificate_thumbprint(cert, "sha1")) == 27
    with pytest.raises(ConfigurationError, match="sha256"):
        certificate_thumbprint(cert, "md5")  # type: ignore[arg-type]


async def test_pem_round_trips() -> None:
    cert = await self_signed_certificate(local("RS256"))
    pem = certificate_pem(cert)
    assert pem.startswith("-----BEGIN CERTIFICATE-----\n") and pem.endswith("-----END CERTIFICATE-----\n")
    assert x509.load_pem_x509_certificate(pem.encode()) == cert
