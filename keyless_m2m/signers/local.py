"""A signer holding the private key in this process (PEM or JWK).

For development, tests, and deployments where a mounted key file is acceptable. The key
object never appears in ``repr`` or in error messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .._jose import Algorithm, choose_algorithm, der_to_raw, key_family
from ..errors import ConfigurationError
from ._base import CachedDescriptionSigner, KeyDescription, ensure_kid

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class LocalSigner(CachedDescriptionSigner):
    """Signs with a private key loaded into memory.

    >>> signer = LocalSigner.from_pem_file("private_key.pem")            # doctest: +SKIP
    >>> signer = LocalSigner.from_pem_file("rsa.pem", algorithm="PS256")  # doctest: +SKIP

    RSA keys default to RS256 (PS256/384/512 and RS384/512 on request); EC P-256/384/521
    keys use ES256/384/512; Ed25519 uses EdDSA. A requested algorithm that does not fit
    the key is a :class:`~keyless_m2m.ConfigurationError` here, not at the first token
    request. ``key_id`` defaults to the RFC 7638 thumbprint of the public key.
    """

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        algorithm: str | None = None,
        key_id: str | None = None,
        name: str = "local key",
    ) -> None:
        if not isinstance(
            private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        ):
            raise ConfigurationError(
                f"unsupported private key type {type(private_key).__name__}; "
                "use RSA, EC P-256/P-384/P-521 or Ed25519"
            )
        if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < 2048:
            raise ConfigurationError(f"{name}: RSA keys must have at least 2048 bits")
        self._key = private_key
        self._name = name
        public = private_key.public_key()
        family, curve = key_family(public)
        self._alg = choose_algorithm(family, curve, algorithm, key=name)
        # Local keys describe instantly: resolve now so errors surface at construction.
        self._description = KeyDescription.for_public_key(public, self._alg.name, ensure_kid(key_id))

    @property
    def key_name(self) -> str:
        return self._name

    @classmethod
    def from_pem(
        cls,
        pem: bytes | str,
        password: bytes | str | None = None,
        *,
        algorithm: str | None = None,
        key_id: str | None = None,
        name: str = "PEM key",
    ) -> LocalSigner:
        """Load a PKCS#1, PKCS#8 (optionally encrypted) or SEC1 PEM private key."""
        data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
        secret = password.encode() if isinstance(password, str) else password
        try:
            key = serialization.load_pem_private_key(data, password=secret)
        except TypeError:
            # cryptography says "Password was not given but private key is encrypted" or
            # the reverse; neither message carries key material, but keep ours uniform.
            if secret is None:
                raise ConfigurationError(f"{name} is encrypted: pass password=") from None
            raise ConfigurationError(f"{name} is not encrypted: do not pass a password") from None
        except (ValueError, UnsupportedAlgorithm):
            if secret is not None and b"ENCRYPTED" in data:
                raise ConfigurationError(f"{name}: wrong password, or not a valid private key") from None
            raise ConfigurationError(f"{name} is not a valid PEM private key") from None
        return cls(key, algorithm=algorithm, key_id=key_id, name=name)  # type: ignore[arg-type]

    @classmethod
    def from_pem_file(
        cls,
        path: str | PathLike[str],
        password: bytes | str | None = None,
        algorithm: str | None = None,
        *,
        key_id: str | None = None,
    ) -> LocalSigner:
        """Load a PEM private key from a file (see :meth:`from_pem`)."""
        file = Path(path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read key file {file.name!r}: {exc.strerror}") from None
        return cls.from_pem(
            data, password, algorithm=algorithm, key_id=key_id, name=f"key file {file.name!r}"
        )

    @classmethod
    def from_jwk(
        cls,
        jwk: Mapping[str, Any] | str,
        *,
        algorithm: str | None = None,
        key_id: str | None = None,
    ) -> LocalSigner:
        """Load a private JWK (dict or JSON text). ``alg``/``kid`` members are honoured
        unless overridden."""
        from jwcrypto import jwk as jwcrypto_jwk

        try:
            members = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
        except ValueError:
            raise ConfigurationError("the JWK is not valid JSON") from None
        if not isinstance(members, dict):
            raise ConfigurationError("the JWK must be a JSON object")
        try:
            key = jwcrypto_jwk.JWK(**members)
            if not key.has_private:
                raise ConfigurationError("the JWK holds no private key")
            pem = key.export_to_pem(private_key=True, password=None)
        except ConfigurationError:
            raise
        except Exception:  # jwcrypto raises a variety of types for bad input
            raise ConfigurationError("the JWK is not a valid RSA, EC or OKP private key") from None
        alg = algorithm if algorithm is not None else members.get("alg")
        kid = key_id if key_id is not None else members.get("kid")
        return cls.from_pem(pem, algorithm=alg, key_id=kid, name="JWK")

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> LocalSigner:
        """``file:///absolute/path/key.pem`` (``password=``/``algorithm=`` as options)."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError("a file signer URI looks like file:///path/to/key.pem")
        return cls.from_pem_file(unquote(parts.path), **options)

    async def _load_description(self) -> KeyDescription:  # pragma: no cover - set in __init__
        raise AssertionError("LocalSigner describes itself at construction")

    async def describe(self) -> KeyDescription:
        assert self._description is not None
        return self._description

    async def sign(self, signing_input: bytes) -> bytes:
        return self._sign_now(self._alg, signing_input)

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        return self._sign_now(alg, signing_input)

    def _sign_now(self, alg: Algorithm, data: bytes) -> bytes:
        # CPU-bound and microseconds long: signing inline beats a thread hop.
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            pad: padding.AsymmetricPadding
            if alg.padding == "pss":
                pad = padding.PSS(mgf=padding.MGF1(alg.crypto_hash()), salt_length=padding.PSS.DIGEST_LENGTH)
            else:
                pad = padding.PKCS1v15()
            return key.sign(data, pad, alg.crypto_hash())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return der_to_raw(key.sign(data, ec.ECDSA(alg.crypto_hash())), alg.coordinate_size)
        return key.sign(data)
