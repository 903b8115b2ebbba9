"""A signer holding the private key in this process (PEM or JWK).

For development, tests, and deployments where a mounted key file is acceptable. The key
object never appears in ``repr`` or in error messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any, overload
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .._jose import Algorithm, choose_algorithm, der_to_raw, key_family
from .._secret import Secret
from ..errors import ConfigurationError
from ._base import CachedDescriptionSigner, KeyDescription, ensure_kid

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class LocalSigner(CachedDescriptionSigner):
    """Signs with a private key loaded into memory.

    >>> signer = LocalSigner.from_pem_file("private_key.pem")
    >>> signer = LocalSigner.from_pem_file("rsa.pem", algorithm="PS256")

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
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            # ECDSA() imports cryptography's OpenSSL backend module on first use (~20 ms
            # cold): here, at construction, not on the event loop in the first signature.
            ec.ECDSA(self._alg.crypto_hash())

    @property
    def key_name(self) -> str:
        return self._name

    @classmethod
    def from_pem(
        cls,
        pem: bytes | str | Secret[bytes] | Secret[str],
        password: bytes | str | Secret[bytes] | Secret[str] | None = None,
        *,
        algorithm: str | None = None,
        key_id: str | None = None,
        name: str = "PEM key",
    ) -> LocalSigner:
        """Load a PKCS#1, PKCS#8 (optionally encrypted) or SEC1 PEM private key.

        ``pem`` and ``password`` may be :class:`~keyless_m2m._secret.Secret`; plain values
        are wrapped at once, and no frame of an error raised here holds them.
        """
        # Rebinding the parameters drops the raw values from this frame's locals: an error
        # tracker records them for every frame of a traceback.
        pem, password = _wrap(pem), _wrap(password)
        loaded = _load_pem(pem, password)  # returns, never raises: its frame holds the text
        del pem, password
        if isinstance(loaded, str):
            raise ConfigurationError(loaded.format(name=name))
        return cls(loaded, algorithm=algorithm, key_id=key_id, name=name)

    @classmethod
    def from_pem_file(
        cls,
        path: str | PathLike[str],
        password: bytes | str | Secret[bytes] | Secret[str] | None = None,
        algorithm: str | None = None,
        *,
        key_id: str | None = None,
    ) -> LocalSigner:
        """Load a PEM private key from a file (see :meth:`from_pem`)."""
        password = _wrap(password)
        file = Path(path)
        data = _read(file, os.fspath(path))
        if isinstance(data, str):
            raise ConfigurationError(data)
        return cls.from_pem(
            data, password, algorithm=algorithm, key_id=key_id, name=f"key file {os.fspath(path)!r}"
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
        loaded = _jwk_to_pem(Secret(jwk))  # returns, never raises: its frame holds the members
        del jwk
        if isinstance(loaded, str):
            raise ConfigurationError(loaded)
        pem, alg, kid = loaded
        return cls.from_pem(
            pem,
            algorithm=algorithm if algorithm is not None else alg,
            key_id=key_id if key_id is not None else kid,
            name="JWK",
        )

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> LocalSigner:
        """``file:///absolute/path/key.pem`` (``password=``/``algorithm=`` as options)."""
        parts = urlsplit(uri)
        if "password" in options:  # the options dict is this frame's own (built by **)
            options["password"] = _wrap(options["password"])
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError("a file signer URI looks like file:///path/to/key.pem")
        if parts.query:
            # Only the names: a value may be a password someone hoped the URI would carry.
            names = sorted({pair.split("=", 1)[0] for pair in parts.query.split("&") if pair})
            raise ConfigurationError(
                f"file signer URIs take no query (got {', '.join(names) or '?'}): pass "
                "password=, algorithm= or key_id= as options (the CLI: --algorithm)"
            )
        if parts.fragment:
            raise ConfigurationError("file signer URIs take no #fragment")
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


# -- loading, in frames that return instead of raising ------------------------------------
# A raised error's traceback holds the frames it passed through, and error trackers record
# their local variables. The helpers below hold the PEM text, the password or the JWK's
# private members; each returns a key or a message, so none of their frames is ever in a
# traceback, and the caught exceptions (whose chains would hold them) end inside them.


_Text = bytes | str | Secret[bytes] | Secret[str]


@overload
def _wrap(value: _Text) -> Secret[bytes] | Secret[str]: ...
@overload
def _wrap(value: _Text | None) -> Secret[bytes] | Secret[str] | None: ...
def _wrap(value: _Text | None) -> Secret[bytes] | Secret[str] | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value)  # type: ignore[return-value]  # Secret[bytes | str] is one of the two


def _read(file: Path, given: str) -> Secret[bytes] | str:
    try:
        return Secret(file.read_bytes())
    except OSError as exc:
        return f"cannot read key file {given!r}: {exc.strerror}"


def _load_pem(
    pem: Secret[bytes] | Secret[str], password: Secret[bytes] | Secret[str] | None
) -> PrivateKey | str:
    """The key, or a message with ``{name}`` where the key's name goes."""
    text, secret = pem.reveal(), password.reveal() if password is not None else None
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    if isinstance(secret, str):
        secret = secret.encode()
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        # cryptography says "Password was not given but private key is encrypted" or
        # the reverse; neither message carries key material, but keep ours uniform.
        if secret is None:
            return "{name} is encrypted: pass password="
        return "{name} is not encrypted: do not pass a password"
    except (ValueError, UnsupportedAlgorithm):
        if secret is not None and b"ENCRYPTED" in data:
            return "{name}: wrong password, or not a valid private key"
        return "{name} is not a valid PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return f"unsupported private key type {type(key).__name__}; use RSA, EC P-256/P-384/P-521 or Ed25519"
    return key


def _jwk_to_pem(jwk: Secret[Mapping[str, Any] | str]) -> tuple[Secret[bytes], Any, Any] | str:
    """``(PEM, alg member, kid member)`` of a private JWK, or a message."""
    from jwcrypto import jwk as jwcrypto_jwk

    value = jwk.reveal()
    try:
        members = json.loads(value) if isinstance(value, str) else dict(value)
    except ValueError:
        return "the JWK is not valid JSON"
    if not isinstance(members, dict):
        return "the JWK must be a JSON object"
    try:
        key = jwcrypto_jwk.JWK(**members)
        if not key.has_private:
            return "the JWK holds no private key"
        pem = Secret(key.export_to_pem(private_key=True, password=None))
    except Exception:  # jwcrypto raises a variety of types for bad input
        return "the JWK is not a valid RSA, EC or OKP private key"
    return pem, members.get("alg"), members.get("kid")
