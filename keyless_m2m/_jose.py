"""JOSE building blocks shared by every signer backend.

base64url, the JWS signing input, DER ECDSA signatures to the raw ``r || s`` form JWS
needs, JWKs from public keys, RFC 7638 thumbprints, and the table that says which JWS
``alg`` fits which key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .errors import ConfigurationError, SigningError

KeyFamily = Literal["RSA", "EC", "OKP"]
Padding = Literal["pkcs1v15", "pss", None]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class Algorithm:
    """What a JWS ``alg`` means for a signer."""

    name: str
    family: KeyFamily
    hash_name: str | None  # "sha256" / "sha384" / "sha512"; None for EdDSA
    padding: Padding = None  # RSA only
    curve: str | None = None  # EC: JWK crv; OKP: "Ed25519"
    coordinate_size: int = 0  # EC: bytes per r / s

    @property
    def digest_size(self) -> int:
        return {"sha256": 32, "sha384": 48, "sha512": 64}.get(self.hash_name or "", 0)

    def digest(self, data: bytes) -> bytes:
        """Hash ``data`` with this algorithm's hash (for backends that sign digests)."""
        if self.hash_name is None:
            raise SigningError(f"{self.name} signs the message itself, not a digest")
        return hashlib.new(self.hash_name, data).digest()

    def crypto_hash(self) -> hashes.HashAlgorithm:
        if self.hash_name == "sha384":
            return hashes.SHA384()
        if self.hash_name == "sha512":
            return hashes.SHA512()
        return hashes.SHA256()


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("RS256", "RSA", "sha256", "pkcs1v15"),
        Algorithm("RS384", "RSA", "sha384", "pkcs1v15"),
        Algorithm("RS512", "RSA", "sha512", "pkcs1v15"),
        Algorithm("PS256", "RSA", "sha256", "pss"),
        Algorithm("PS384", "RSA", "sha384", "pss"),
        Algorithm("PS512", "RSA", "sha512", "pss"),
        Algorithm("ES256", "EC", "sha256", curve="P-256", coordinate_size=32),
        Algorithm("ES384", "EC", "sha384", curve="P-384", coordinate_size=48),
        Algorithm("ES512", "EC", "sha512", curve="P-521", coordinate_size=66),
        Algorithm("EdDSA", "OKP", None, curve="Ed25519"),
    )
}


def jws_algorithm(name: object, *, key: str | None = None) -> Algorithm:
    """The :class:`Algorithm` a JWS ``alg`` name stands for.

    The one check of a requested algorithm every signer makes (at construction, before any
    provider call), so every backend refuses an unknown name with the same message:

    >>> jws_algorithm("ES256").curve
    'P-256'
    >>> jws_algorithm("HS256")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    keyless_m2m.errors.ConfigurationError: unknown JWS algorithm 'HS256'; known: RS256, ...
    """
    if not isinstance(name, str):  # e.g. a JWK whose "alg" member is not a string
        where = f"{_named(key)}: " if key is not None else ""
        raise ConfigurationError(f"{where}the JWS algorithm must be a string, not {type(name).__name__}")
    alg = ALGORITHMS.get(name)
    if alg is None:
        raise ConfigurationError(f"unknown JWS algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return alg


#: The JWS alg chosen when the caller does not ask for one.
DEFAULT_ALG: dict[tuple[KeyFamily, str | None], str] = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
    ("OKP", "Ed25519"): "EdDSA",
}


def _named(key: str | None) -> str:
    """``key NAME``, unless the name already says what it is ("key file 'a.pem'", "JWK")."""
    if key is None:
        return "key"
    return key if re.search(r"\b(key|JWK)\b", key) else f"key {key}"


def choose_algorithm(
    family: KeyFamily,
    curve: str | None,
    requested: str | None,
    *,
    key: str,
    allowed: frozenset[str] | None = None,
) -> Algorithm:
    """Pick the JWS alg for a key, or explain why the requested one cannot work.

    ``allowed`` narrows the choice further (a KMS key that only permits some algorithms).
    """
    if requested is None:
        name = DEFAULT_ALG.get((family, None if family == "RSA" else curve))
        if name is None:
            raise ConfigurationError(f"{_named(key)}: no JWS algorithm for an {family} {curve} key")
        if allowed is not None and name not in allowed:
            fits = sorted(allowed)
            if not fits:
                raise ConfigurationError(f"{_named(key)}: the key allows no JWS signing algorithm")
            name = fits[0]
        return ALGORITHMS[name]
    alg = jws_algorithm(requested, key=key)
    if alg.family != family or (family != "RSA" and alg.curve != curve):
        described = f"{family} {curve}" if curve else family
        raise ConfigurationError(f"{_named(key)}: {requested} does not fit an {described} key")
    if allowed is not None and requested not in allowed:
        raise ConfigurationError(
            f"{_named(key)}: {requested} is not allowed for this key; allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    return alg


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str | bytes) -> bytes:
    """Decode base64url with or without padding; raises ``ValueError`` on garbage."""
    raw = text.encode("ascii") if isinstance(text, str) else text
    raw = raw.strip()
    stripped = raw.rstrip(b"=")
    if stripped and not stripped.replace(b"-", b"").replace(b"_", b"").isalnum():
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except ValueError:
        raise ValueError("not base64url") from None


def _compact_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_segment(obj: Mapping[str, Any]) -> str:
    """One JWS segment: base64url of compact JSON."""
    return b64url(_compact_json(obj))


def signing_input(header: Mapping[str, Any], claims: Mapping[str, Any]) -> bytes:
    """``b64(header) . b64(claims)`` as bytes, the input every signer signs."""
    return f"{encode_segment(header)}.{encode_segment(claims)}".encode("ascii")


def der_to_raw(der: bytes, coordinate_size: int) -> bytes:
    """A DER ``ECDSA-Sig-Value`` to JWS ``r || s``, each left-padded to ``coordinate_size``.

    KMS backends (AWS, GCP) return DER; JWS (RFC 7518 section 3.4) wants fixed-width halves.
    """
    try:
        r, s = decode_dss_signature(der)
    except (ValueError, TypeError) as exc:
        raise SigningError("the signer returned a malformed ECDSA signature") from exc
    limit = 1 << (8 * coordinate_size)
    if not (0 < r < limit and 0 < s < limit):
        raise SigningError("the signer returned an ECDSA signature of the wrong size")
    return r.to_bytes(coordinate_size, "big") + s.to_bytes(coordinate_size, "big")


def raw_to_der(raw: bytes) -> bytes:
    """JWS ``r || s`` back to DER (for verifiers that want DER)."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def check_signature_length(alg: Algorithm, signature: bytes, *, key: str) -> bytes:
    """Reject a signature whose length cannot be right for ``alg`` (a KMS answer gone wrong)."""
    if alg.family == "EC":
        expected = 2 * alg.coordinate_size
    elif alg.family == "OKP":
        expected = 64
    else:
        if len(signature) < 256:  # RSA keys shorter than 2048 bits are not accepted anywhere
            raise SigningError(f"key {key}: an RSA signature of {len(signature)} bytes is too short", key=key)
        return signature
    if len(signature) != expected:
        raise SigningError(
            f"key {key}: {alg.name} signature has {len(signature)} bytes, expected {expected}",
            key=key,
        )
    return signature


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


_CURVE_JWK = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48), "secp521r1": ("P-521", 66)}


def key_family(public_key: PublicKey) -> tuple[KeyFamily, str | None]:
    """(family, curve) of a public key; ``ConfigurationError`` for unsupported keys."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _CURVE_JWK.get(public_key.curve.name)
        if curve is None:
            raise ConfigurationError(f"EC curve {public_key.curve.name} has no JWS algorithm")
        return "EC", curve[0]
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "OKP", "Ed25519"
    raise ConfigurationError(f"unsupported key type {type(public_key).__name__}")


def public_jwk(public_key: PublicKey) -> dict[str, str]:
    """The public JWK (RFC 7517/7518/8037 members only, no ``kid``/``alg``)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        crv, size = _CURVE_JWK[public_key.curve.name]
        point = public_key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": _int_b64(point.x, size), "y": _int_b64(point.y, size)}
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
    raise ConfigurationError(f"unsupported key type {type(public_key).__name__}")


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


def public_key_members(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The JWK's required public-key members only (RFC 7638 section 3.2: no ``kid``,
    ``alg``, ``use``), e.g. for a DPoP proof's ``jwk`` header."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ConfigurationError(f"cannot use a JWK of kty {jwk.get('kty')!r} (RSA, EC or OKP)")
    return {m: jwk[m] for m in members}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    canonical = public_key_members(jwk)
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()).digest()
    return b64url(digest)


def load_public_der(der: bytes) -> PublicKey:
    """A DER SubjectPublicKeyInfo (what AWS ``GetPublicKey`` returns) to a public key."""
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ConfigurationError(f"unsupported public key type {type(key).__name__}")
    return key


def load_public_pem(pem: bytes) -> PublicKey:
    """A PEM public key (GCP, Vault) to a public key object."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ConfigurationError(f"unsupported public key type {type(key).__name__}")
    return key


def _jwk_int(jwk: Mapping[str, Any], member: str) -> int:
    return int.from_bytes(b64url_decode(str(jwk[member])), "big")


_JWK_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """The public key a public JWK (RSA, EC P-256/384/521, OKP Ed25519) stands for; the
    inverse of :func:`public_jwk`. ``ConfigurationError`` for anything else or a broken JWK."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        if kty == "EC" and crv in _JWK_CURVES:
            point = ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), _JWK_CURVES[crv])
            return point.public_key()
        if kty == "OKP" and crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(str(jwk["x"])))
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(f"not a valid {kty} public JWK: {type(exc).__name__}") from None
    raise ConfigurationError(f"unsupported public JWK (kty {kty!r}, crv {crv!r})")
