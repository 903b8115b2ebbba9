"""JOSE helpers: DER->raw vectors, RFC 7638 thumbprint, base64url, algorithm choice."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keyless_m2m import ConfigurationError, SigningError
from keyless_m2m._jose import (
    ALGORITHMS,
    b64url,
    b64url_decode,
    check_signature_length,
    choose_algorithm,
    der_to_raw,
    jwk_thumbprint,
    public_jwk,
    public_key_from_jwk,
)
from tests.helpers import make_key

RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPeb"
    "WKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQ"
    "MicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcR"
    "wr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_rejects_unknown_kty() -> None:
    with pytest.raises(ConfigurationError, match="kty 'oct'"):
        jwk_thumbprint({"kty": "oct", "k": "AAAA"})


@pytest.mark.parametrize(
    ("der", "size", "raw"),
    [
        # r = 1, s = 2: tiny integers, padded to 32 bytes each
        (bytes.fromhex("3006020101020102"), 32, b"\x00" * 31 + b"\x01" + b"\x00" * 31 + b"\x02"),
        # r with the high bit set: DER carries a leading 0x00 that must be dropped
        (
            bytes.fromhex("3026022100" + "80" + "11" * 31 + "0201" + "7f"),
            32,
            b"\x80" + b"\x11" * 31 + b"\x00" * 31 + b"\x7f",
        ),
        # P-521 halves are 66 bytes; a 65-byte r gets one leading zero
        (
            encode_dss_signature(1 << 519, 3),
            66,
            b"\x00" + (1 << 519).to_bytes(65, "big") + (3).to_bytes(66, "big"),
        ),
    ],
)
def test_der_to_raw_known_vectors(der: bytes, size: int, raw: bytes) -> None:
    assert der_to_raw(der, size) == raw


def test_der_to_raw_rejects_garbage_and_oversize() -> None:
    with pytest.raises(SigningError, match="malformed ECDSA signature"):
        der_to_raw(b"\x30\x00garbage", 32)
    with pytest.raises(SigningError, match="wrong size"):
        der_to_raw(encode_dss_signature(1 << 256, 1), 32)  # r does not fit 32 bytes


def test_b64url_round_trip_without_padding() -> None:
    for data in (b"", b"f", b"fo", b"foo", bytes(range(256))):
        encoded = b64url(data)
        assert "=" not in encoded and "+" not in encoded and "/" not in encoded
        assert b64url_decode(encoded) == data
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode("not*base64")


def test_choose_algorithm_defaults_and_mismatches() -> None:
    assert choose_algorithm("RSA", None, None, key="k").name == "RS256"
    assert choose_algorithm("EC", "P-384", None, key="k").name == "ES384"
    assert choose_algorithm("OKP", "Ed25519", None, key="k").name == "EdDSA"
    assert choose_algorithm("RSA", None, "PS512", key="k").name == "PS512"
    with pytest.raises(ConfigurationError, match="ES256 does not fit an RSA key"):
        choose_algorithm("RSA", None, "ES256", key="k")
    with pytest.raises(ConfigurationError, match="does not fit"):
        choose_algorithm("EC", "P-256", "ES384", key="k")
    with pytest.raises(ConfigurationError, match="unknown JWS algorithm"):
        choose_algorithm("RSA", None, "HS256", key="k")
    with pytest.raises(ConfigurationError, match="not allowed"):
        choose_algorithm("RSA", None, "PS256", key="k", allowed=frozenset({"RS256"}))


def test_signature_length_checks() -> None:
    with pytest.raises(SigningError, match="expected 64"):
        check_signature_length(ALGORITHMS["ES256"], b"\x01" * 70, key="k")
    with pytest.raises(SigningError, match="too short"):
        check_signature_length(ALGORITHMS["RS256"], b"\x01" * 128, key="k")
    assert check_signature_length(ALGORITHMS["EdDSA"], b"\x01" * 64, key="k") == b"\x01" * 64


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384", "p521", "ed25519"])
def test_public_key_from_jwk_inverts_public_jwk(kind: str) -> None:
    public = make_key(kind).public_key()
    assert public_key_from_jwk({**public_jwk(public), "kid": "k", "alg": "x"}) == public


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "oct", "k": "AA"}, "unsupported public JWK"),
        ({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}, "unsupported public JWK"),
        ({"kty": "EC", "crv": "P-256", "x": "AA"}, "not a valid EC public JWK"),
        ({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}, "not a valid EC public JWK"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AA"}, "not a valid OKP public JWK"),
    ],
)
def test_public_key_from_jwk_refusals(jwk: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        public_key_from_jwk(jwk)
