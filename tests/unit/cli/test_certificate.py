"""``keyless-m2m certificate`` in-process: PEM on stdout or in ``--out``, the ``--json``
document (thumbprints against hashlib), the signer from the environment, and the refusals
with their exit codes."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keyless_m2m.cli import ENV_SIGNER, run
from tests.certificate_checks import check_certificate
from tests.cli_runner import jwk_of, key_uri
from tests.helpers import make_key, require_module
from tests.processes import free_port

pytestmark = pytest.mark.anyio


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_pem_on_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    uri = key_uri(tmp_path, "rsa")
    assert (
        await run(["certificate", uri, "--algorithm", "PS256", "--subject", "CN=svc,O=Example"], environ={})
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err == ""
    cert = x509.load_pem_x509_certificate(captured.out.encode())
    check_certificate(cert, jwk_of("rsa", "PS256"), subject="CN=svc,O=Example")
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 365


async def test_json_and_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "cert.json"
    argv = ["certificate", "--json", "--days", "7", "--out", str(target)]
    assert await run(argv, environ={ENV_SIGNER: key_uri(tmp_path, "ed25519")}) == 0
    assert capsys.readouterr().out == ""
    document = json.loads(target.read_text())
    assert set(document) == {"pem", "x5t#S256", "x5t", "not_after", "subject"}
    cert = x509.load_pem_x509_certificate(document["pem"].encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert document["x5t#S256"] == _b64url(hashlib.sha256(der).digest())
    assert document["x5t"] == _b64url(hashlib.sha1(der).digest())  # noqa: S324 - x5t is SHA-1
    assert document["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert document["subject"] == "CN=keyless-m2m"
    check_certificate(cert, jwk_of("ed25519", "EdDSA"), subject="CN=keyless-m2m")


async def test_pem_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "cert.pem"
    assert await run(["certificate", key_uri(tmp_path, "p384"), "--out", str(target)], environ={}) == 0
    cert = x509.load_pem_x509_certificate(target.read_bytes())
    check_certificate(cert, jwk_of("p384", "ES384"), subject="CN=keyless-m2m")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["certificate"], "certificate URI"),
        (["certificate", "KEY", "--days", "0"], "between 1 and 3650"),
        (["certificate", "KEY", "--days", "3651"], "between 1 and 3650"),
        (["certificate", "KEY", "--subject", "not a name"], "RFC 4514"),
        (["certificate", "KEY", "--algorithm", "RS256"], "RS256 does not fit"),
        (["certificate", "KEY", "--out", "/nonexistent-dir/cert.pem"], "cannot write the certificate"),
        (["certificate", "s3://bucket/key"], "unknown signer URI scheme"),
    ],
)
async def test_refusals_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uri = key_uri(tmp_path, "p256")
    assert await run([uri if a == "KEY" else a for a in argv], environ={}) == 2
    err = capsys.readouterr().err
    assert message in err and "ConfigurationError" in err


async def test_days_must_be_a_number(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert await run(["certificate", key_uri(tmp_path, "p256"), "--days", "a year"], environ={}) == 2
    assert "--days" in capsys.readouterr().err


async def test_a_signer_failure_is_exit_code_5(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("hvac", reason="the vault extra (hvac) is not installed")
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("VAULT_TOKEN", "unused-token")
    assert await run(["certificate", "hashivault://payments"], environ={}) == 5
    err = capsys.readouterr().err
    assert "SigningError" in err and "unused-token" not in err


async def test_the_signer_flag_names_the_key_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # issue 20: token takes --signer, certificate only a positional URI; it takes both.
    uri, other = key_uri(tmp_path, "p256"), key_uri(tmp_path, "rsa")
    assert await run(["certificate", "--signer", uri], environ={ENV_SIGNER: other}) == 0
    cert = x509.load_pem_x509_certificate(capsys.readouterr().out.encode())
    assert isinstance(cert.public_key(), type(make_key("p256").public_key()))
    assert await run(["certificate", "--signer", uri, uri], environ={}) == 0  # the same, twice
    capsys.readouterr()
    assert await run(["certificate", "--signer", uri, other], environ={}) == 2
    assert "one signer" in capsys.readouterr().err
