"""``keyless-m2m certificate`` in a subprocess, as a user runs it: the PEM it prints is
verified by openssl, ``--json`` thumbprints are those of that PEM, and a refusal is one
line on stderr with exit code 2."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.certificate_checks import check_certificate
from tests.cli_runner import cli, jwk_of, key_uri, one_line_error

pytestmark = pytest.mark.integration


def test_cli_certificate(tmp_path: Path) -> None:
    target = tmp_path / "entra.json"
    env = {"KEYLESS_M2M_SIGNER": key_uri(tmp_path, "rsa")}
    argv = ["--algorithm", "PS256", "--subject", "CN=svc,O=Example", "--json", "--out", str(target)]
    result = cli("certificate", *argv, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    document = json.loads(target.read_text())
    cert = x509.load_pem_x509_certificate(document["pem"].encode())
    check_certificate(cert, jwk_of("rsa", "PS256"), subject="CN=svc,O=Example")  # openssl verify too
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    assert document["x5t#S256"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_cli_certificate_refusal_is_one_line(tmp_path: Path) -> None:
    refused = cli("certificate", key_uri(tmp_path, "p256"), "--subject", "CN=svc,")
    assert refused.returncode == 2
    assert "not an RFC 4514 name" in one_line_error(refused, "ConfigurationError")
