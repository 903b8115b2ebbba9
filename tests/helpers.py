"""Helpers for the tests (never imported from ``conftest.py``): CI-aware skips, exception
chains, throwaway keys, and an independent JWS verifier (PyJWT, not the library's code)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

import jwt
import jwt.types
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_server(reason: str) -> NoReturn:
    """An integration server is missing: fail in CI (it must be installed), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, reason: str | None = None) -> Any:
    """``pytest.importorskip`` that fails under ``CI=true``: CI installs every extra and
    every test double, so a missing one is a broken set-up, not a reason to skip."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing_server(reason or f"{name} is not installed")


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, its ``__cause__`` (else its ``__context__``), and so on; each one once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def exception_texts(exc: BaseException) -> list[str]:
    """The traceback, then the message, repr and attributes of each exception in the chain."""
    texts = ["".join(traceback.format_exception(exc))]
    for current in exception_chain(exc):
        texts += [str(current), repr(current), repr(getattr(current, "__dict__", {}))]
    return texts


_KEY_CACHE: dict[str, Any] = {}


def make_key(kind: str) -> Any:
    """A private key per kind, generated once per session (RSA generation is slow)."""
    if kind not in _KEY_CACHE:
        if kind == "rsa" or kind == "rsa-b":
            _KEY_CACHE[kind] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "p256":
            _KEY_CACHE[kind] = ec.generate_private_key(ec.SECP256R1())
        elif kind == "p384":
            _KEY_CACHE[kind] = ec.generate_private_key(ec.SECP384R1())
        elif kind == "p521":
            _KEY_CACHE[kind] = ec.generate_private_key(ec.SECP521R1())
        elif kind == "ed25519":
            _KEY_CACHE[kind] = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(kind)
    return _KEY_CACHE[kind]


def pem_of(key: Any, *, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1 / SEC1
    }
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return bytes(key.private_bytes(serialization.Encoding.PEM, formats[fmt], encryption))


ALG_KEYS = {
    "RS256": "rsa",
    "RS384": "rsa",
    "RS512": "rsa",
    "PS256": "rsa",
    "PS384": "rsa",
    "PS512": "rsa",
    "ES256": "p256",
    "ES384": "p384",
    "ES512": "p521",
    "EdDSA": "ed25519",
}


def verify_jws(token: str, public_jwk: dict[str, Any], *, audience: str | None = None) -> dict[str, Any]:
    """Verify a compact JWS with PyJWT (independent of the code that signed it)."""
    alg = public_jwk["alg"]
    key = jwt.PyJWK.from_dict(dict(public_jwk), algorithm=alg)
    options: jwt.types.Options = {"verify_aud": audience is not None}
    return jwt.decode(token, key=key.key, algorithms=[alg], audience=audience, options=options)
