"""Self-signed X.509 certificates for a signer's key, signed inside the KMS/HSM.

Some authorization servers (Microsoft Entra ID among them) register a client's key as a
certificate, not as a bare JWK. The private key never leaves the KMS, so the certificate
cannot be made with a local key: :func:`self_signed_certificate` writes the
TBSCertificate (RFC 5280 section 4.1) around the signer's public key, has the signer sign
it (one ``sign()`` call), and checks the result with the public key before returning it.

>>> cert = await self_signed_certificate(signer, subject="CN=payments-m2m", days=365)
>>> pem = certificate_pem(cert)                 # upload this to the app registration
>>> pem.splitlines()[0]
'-----BEGIN CERTIFICATE-----'
>>> thumbprint = certificate_thumbprint(cert)   # its x5t#S256: 43 base64url characters

The DER is written here rather than by ``cryptography``'s ``CertificateBuilder``, which
signs only with a local private key. The encoding is the small part of DER a certificate
needs; ``cryptography`` still encodes the names, the public key and the extension values,
and parses the result.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ._jose import Algorithm, b64url, key_family, public_key_from_jwk, raw_to_der
from .errors import ConfigurationError, SigningError
from .signers import Signer

__all__ = ["certificate_pem", "certificate_thumbprint", "self_signed_certificate"]

from ._certificate_limits import DEFAULT_SUBJECT as DEFAULT_SUBJECT
from ._certificate_limits import MAX_DAYS as MAX_DAYS

# notBefore is this far in the past, so that a server whose clock runs a little behind
# accepts a certificate made a moment ago.
CLOCK_LEEWAY = timedelta(minutes=5)

# -- the part of DER a certificate needs (X.690) ----------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def _sequence(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


def _explicit(number: int, content: bytes) -> bytes:
    return _der(0xA0 | number, content)


def _integer(value: int) -> bytes:
    # Non-negative only: the extra bit keeps the sign bit clear (a 0x00 lead when needed).
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    body = b""
    for value in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, body)


def _time(moment: datetime) -> bytes:
    # RFC 5280 section 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
    if moment.year < 2050:
        return _der(0x17, moment.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _der(0x18, moment.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


_NULL = b"\x05\x00"
_TRUE = b"\x01\x01\xff"

# -- signature algorithm identifiers (RFC 4055, RFC 5758, RFC 8410) -------------------------

_HASH_OID = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_RSA_PKCS1_OID = {
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_OID = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
_MGF1_OID = "1.2.840.113549.1.1.8"
_ED25519_OID = "1.3.101.112"


def _signature_algorithm(alg: Algorithm) -> bytes:
    """The AlgorithmIdentifier of what ``alg`` signs, as the signer signs it: for PS*, the
    hash, MGF1 with the same hash, and a salt as long as the hash (RFC 7518 section 3.5)."""
    if alg.family == "OKP":
        return _sequence(_oid(_ED25519_OID))  # RFC 8410: parameters absent
    assert alg.hash_name is not None
    if alg.family == "EC":
        return _sequence(_oid(_ECDSA_OID[alg.hash_name]))  # RFC 5758: parameters absent
    if alg.padding == "pss":
        digest = _sequence(_oid(_HASH_OID[alg.hash_name]), _NULL)
        parameters = _sequence(
            _explicit(0, digest),
            _explicit(1, _sequence(_oid(_MGF1_OID), digest)),
            _explicit(2, _integer(alg.digest_size)),
        )  # trailerField: the default (1), so absent
        return _sequence(_oid(_RSASSA_PSS_OID), parameters)
    return _sequence(_oid(_RSA_PKCS1_OID[alg.hash_name]), _NULL)


def _extension(extension: x509.ExtensionType, *, critical: bool) -> bytes:
    return _sequence(
        _oid(extension.oid.dotted_string),
        _TRUE if critical else b"",
        _der(0x04, extension.public_bytes()),
    )


_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)

# -- the public functions ----------------------------------------------------------------------


def _subject_name(subject: object) -> x509.Name:
    if not isinstance(subject, str):
        raise TypeError(
            f"subject must be an RFC 4514 string such as 'CN=my-client', not {type(subject).__name__}"
        )
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        raise ConfigurationError(
            f"subject {subject!r} is not an RFC 4514 name (write it like 'CN=my-client,O=Example')"
        ) from None
    if not name.rdns:
        raise ConfigurationError("subject must name at least one attribute, e.g. 'CN=my-client'")
    return name


def _check_days(days: object) -> int:
    if not isinstance(days, int) or isinstance(days, bool):
        raise TypeError(f"days must be an integer, not {type(days).__name__}")
    if not 1 <= days <= MAX_DAYS:
        raise ConfigurationError(f"days must be between 1 and {MAX_DAYS}, not {days}")
    return days


async def self_signed_certificate(
    signer: Signer,
    *,
    subject: str = DEFAULT_SUBJECT,
    days: int = 365,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A self-signed X.509 v3 certificate for ``signer``'s public key, signed by the signer.

    ``subject`` (also the issuer) is an RFC 4514 string (``"CN=my-client,O=Example"``);
    the certificate is valid from ``not_before`` (default: 5 minutes ago, for clocks that
    run a little behind) for ``days`` days (1 to 3650). It carries a random 159-bit serial,
    ``basicConstraints`` CA=false and ``keyUsage`` digitalSignature (both critical), and a
    subject key identifier. The signature algorithm is the signer's JWS ``alg`` (RS*, PS*
    with salt = hash length, ES*, EdDSA) and the signature is the one ``signer.sign()``
    call this makes; no private key is used in this process.

    The certificate is verified with the signer's public key before it is returned: a
    signature that does not verify (a KMS that signs differently from what its ``alg``
    says) raises :class:`~keyless_m2m.errors.SigningError`. Bad arguments raise
    :class:`~keyless_m2m.errors.ConfigurationError` (``TypeError`` for a wrong type).

    >>> cert = await self_signed_certificate(signer, subject="CN=payments-m2m")
    >>> cert.not_valid_after_utc - cert.not_valid_before_utc
    datetime.timedelta(days=365)
    """
    name = _subject_name(subject)
    days = _check_days(days)
    if not_before is None:
        not_before = datetime.now(UTC) - CLOCK_LEEWAY
    elif not_before.tzinfo is None:
        raise ConfigurationError("not_before must be timezone-aware (e.g. datetime.now(UTC))")
    start = not_before.astimezone(UTC).replace(microsecond=0)
    end = start + timedelta(days=days)

    description = await signer.describe()
    alg = description.jws_algorithm
    public_key = public_key_from_jwk(description.public_jwk)
    if key_family(public_key)[0] != alg.family:
        raise ConfigurationError(
            f"key {description.key_id}: its public JWK is {description.public_jwk.get('kty')}, "
            f"its algorithm {alg.name}"
        )
    algorithm_identifier = _signature_algorithm(alg)
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name_der = name.public_bytes()
    tbs = _sequence(
        _explicit(0, _integer(2)),  # v3
        _integer(x509.random_serial_number()),
        algorithm_identifier,
        name_der,  # issuer: self-signed
        _sequence(_time(start), _time(end)),
        name_der,
        spki,
        _explicit(
            3,
            _sequence(
                _extension(x509.BasicConstraints(ca=False, path_length=None), critical=True),
                _extension(_KEY_USAGE, critical=True),
                _extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False),
            ),
        ),
    )
    signature = await signer.sign(tbs)
    if alg.family == "EC":
        signature = raw_to_der(signature)  # JWS r || s -> X.509's ECDSA-Sig-Value
    der = _sequence(tbs, algorithm_identifier, _der(0x03, b"\x00" + signature))
    certificate = x509.load_der_x509_certificate(der)
    try:
        certificate.verify_directly_issued_by(certificate)
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        raise SigningError(
            f"key {description.key_id}: the {alg.name} signature of the certificate does not verify "
            "with the key's public key (the signer does not sign as its algorithm says)",
            key=description.key_id,
        ) from None
    return certificate


def certificate_thumbprint(certificate: x509.Certificate, hash: Literal["sha256", "sha1"] = "sha256") -> str:
    """The base64url thumbprint of ``certificate``'s DER: ``x5t#S256`` (``"sha256"``, the
    default) or ``x5t`` (``"sha1"``; RFC 7515 sections 4.1.7 and 4.1.8).

    >>> len(certificate_thumbprint(cert)), len(certificate_thumbprint(cert, "sha1"))
    (43, 27)
    """
    der = certificate.public_bytes(serialization.Encoding.DER)
    if hash == "sha256":
        return b64url(hashlib.sha256(der).digest())
    if hash == "sha1":
        # An identifier, not a security check: x5t is what older servers look keys up by.
        return b64url(hashlib.sha1(der, usedforsecurity=False).digest())
    raise ConfigurationError(f"hash must be 'sha256' (x5t#S256) or 'sha1' (x5t), not {hash!r}")


def certificate_pem(certificate: x509.Certificate) -> str:
    """``certificate`` as PEM text (``-----BEGIN CERTIFICATE-----``), the form to upload."""
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
