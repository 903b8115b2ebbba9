"""Independent checks of a certificate made by ``keyless_m2m.certificates``: cryptography's
own verification, ``openssl verify`` (the certificate as its own trust anchor) and
``openssl x509`` reading it back, and the public key compared with the signer's JWK by
PyJWT, not by the library's JWK code. Shared by the unit, backend and CLI tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers import missing_server


def openssl() -> str:
    """The ``openssl`` binary (CI has it: missing fails there, skips elsewhere)."""
    binary = shutil.which("openssl")
    if binary is None:
        missing_server("openssl is not on PATH")
    return binary


def openssl_verify(pem: str, at: datetime | None = None) -> str:
    """``openssl verify -CAfile cert cert`` (at time ``at``, default now) and ``openssl x509
    -noout -subject``; the subject line openssl printed."""
    binary = openssl()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cert.pem"
        path.write_text(pem)
        when = ["-attime", str(int(at.timestamp()))] if at is not None else []
        verified = subprocess.run(
            [binary, "verify", *when, "-CAfile", str(path), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0 and verified.stdout.strip().endswith(": OK"), verified
        shown = subprocess.run(
            [binary, "x509", "-in", str(path), "-noout", "-subject", "-nameopt", "RFC2253"],
            capture_output=True,
            text=True,
            check=True,
        )
        return shown.stdout.strip()


def public_key_of_jwk(public_jwk: Mapping[str, Any]) -> Any:
    return jwt.PyJWK.from_dict(dict(public_jwk), algorithm=public_jwk.get("alg")).key


def check_certificate(
    cert: x509.Certificate, public_jwk: Mapping[str, Any], *, subject: str, at: datetime | None = None
) -> None:
    """``cert`` is self-signed by the key of ``public_jwk``, for that key, named ``subject``
    (and valid at ``at``, default now)."""
    cert.verify_directly_issued_by(cert)
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(der, spki) == public_key_of_jwk(public_jwk).public_bytes(der, spki)
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == subject
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert openssl_verify(pem, at) == f"subject={subject}"
