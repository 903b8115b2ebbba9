"""``keyless-m2m doctor`` in-process without a server: configuration gaps, a signer that
cannot load, and the fix chosen for each typed error (keyed on the error's type and
``reason``, never on its message). Runs against real servers are in
``tests/integration/cli/test_doctor.py``."""

from __future__ import annotations

import copy
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless_m2m.cli import (
    ENV_CLIENT_ID,
    ENV_SIGNER,
    ENV_TOKEN_ENDPOINT,
    _doctor,
    run,
)
from keyless_m2m.cli._doctor import SIGNATURE_MISMATCH_FIX, Check, Doctor
from keyless_m2m.cli._session import Session
from keyless_m2m.cli._settings import Settings
from keyless_m2m.discovery import ServerMetadata
from keyless_m2m.errors import DiscoveryError, KeylessM2MError, SigningError, TransportError
from keyless_m2m.signers import KeyDescription, Signer
from keyless_m2m.testing.signers import InMemorySigner

ISSUER = "https://auth.example"
pytest_anyio = pytest.mark.anyio


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/token"


@pytest_anyio
async def test_doctor_reports_configuration_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["doctor"], environ={}) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  configuration")
    assert ENV_CLIENT_ID in out and ENV_SIGNER in out and ENV_TOKEN_ENDPOINT in out
    assert "fix:" in out
    assert "SKIP  token obtained" in out


@pytest_anyio
async def test_doctor_reports_a_signer_that_cannot_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    # The metadata check goes to the network: point it at a loopback port nobody listens on.
    argv = ["doctor", "--client-id", "svc", "--signer", bad.as_uri(), "--token-endpoint", closed_port_url()]
    assert await run([*argv, "--timeout", "2"], environ={}) == 2
    out = capsys.readouterr().out
    assert "FAIL  signer reachable" in out and "is not a valid PEM private key" in out
    assert "SKIP  sign + verify" in out and "SKIP  token obtained" in out


# -- the fix is chosen from the error's type and reason, never from its text --------------
#
# Each error below carries a reason its message does not spell out, or a message with the
# words the doctor once matched on (``mismatch``, ``client_credentials``, ``does not
# verify``) beside another reason: the fix must follow the reason.

ISSUER_FIX = "configure the issuer exactly as the server publishes it, if it is the server you mean"
REACHABLE_FIX = f"check that {ISSUER} is right and reachable from here (DNS, proxy, firewall, TLS)"
ISSUER_URL_FIX = (
    "check the issuer URL (no /.well-known suffix), or use --token-endpoint if the server "
    "publishes no metadata"
)
GRANT_FIX = "enable the client_credentials grant on the authorization server"
METHOD_FIX = (
    "register the client for one of the methods the server supports and choose it with "
    "--auth-method, or enable this method on the server"
)


def doctor_for(**settings: Any) -> Doctor:
    return Doctor(Session(Settings(**settings)))


def printed_fix(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if "fix: " in line]
    assert len(lines) == 1, lines
    return lines[0].split("fix: ", 1)[1]


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        pytest.param(
            lambda: DiscoveryError("the metadata names https://evil.example", reason="issuer_mismatch"),
            ISSUER_FIX,
            id="issuer_mismatch-without-the-word",
        ),
        pytest.param(
            lambda: DiscoveryError("no metadata (a mismatch of paths?)", reason="not_found"),
            ISSUER_URL_FIX,
            id="not_found-with-the-word",
        ),
        pytest.param(
            lambda: TransportError("certificate verify failed: Hostname mismatch", reason="tls_verification"),
            REACHABLE_FIX,
            id="tls-hostname-mismatch",
        ),
    ],
)
@pytest_anyio
async def test_metadata_fix_follows_the_reason(
    error: Callable[[], KeylessM2MError],
    fix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def failing_discover(*args: Any, **kwargs: Any) -> ServerMetadata:
        raise error()

    monkeypatch.setattr(_doctor, "discover", failing_discover)
    doctor = doctor_for(issuer=ISSUER)
    async with httpx.AsyncClient() as http:
        await doctor.metadata_check(http)
    assert [(c.name, c.status, c.fix) for c in doctor.checks] == [("metadata reachable", "FAIL", fix)]
    assert printed_fix(capsys) == fix


def metadata(grants: tuple[str, ...] | None = None) -> ServerMetadata:
    return ServerMetadata(
        issuer=ISSUER,
        token_endpoint=ISSUER + "/token",
        token_endpoint_auth_methods_supported=("client_secret_basic",),
        token_endpoint_auth_signing_alg_values_supported=None,
        grant_types_supported=grants,
        url=ISSUER + "/.well-known/oauth-authorization-server",
        raw={},
    )


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        pytest.param(
            DiscoveryError("the server lists only authorization_code", reason="grant_unsupported"),
            GRANT_FIX,
            id="grant_unsupported-without-the-word",
        ),
        pytest.param(
            DiscoveryError("no 'client_credentials_jwt' method here", reason="method_unsupported"),
            METHOD_FIX,
            id="method_unsupported-with-the-word",
        ),
    ],
)
def test_support_fix_follows_the_reason(
    error: DiscoveryError, fix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def mismatches(*args: Any, **kwargs: Any) -> list[DiscoveryError]:
        return [copy.copy(error)]

    monkeypatch.setattr(_doctor, "client_auth_mismatches", mismatches)
    doctor = doctor_for(client_id="svc", client_secret="a-client-secret-value")
    doctor.method, doctor.metadata = "client_secret_basic", metadata()
    doctor.support_check()
    # A warning, not a failure: the token request decides (strict_metadata=True refuses).
    assert [(c.name, c.status, c.fix) for c in doctor.checks] == [("method and alg", "WARN", fix)]
    assert printed_fix(capsys) == fix


def test_support_fix_for_a_server_without_the_grant(capsys: pytest.CaptureFixture[str]) -> None:
    """The same through the real ``client_auth_mismatches``: its reason reaches the doctor."""
    doctor = doctor_for(client_id="svc", client_secret="a-client-secret-value")
    doctor.method, doctor.metadata = "client_secret_basic", metadata(grants=("authorization_code",))
    doctor.support_check()
    check = doctor.checks[-1]
    assert check.status == "WARN" and "strict_metadata=True" in check.detail
    assert isinstance(check.error, DiscoveryError) and check.error.reason == "grant_unsupported"
    assert printed_fix(capsys) == GRANT_FIX


class LyingSigner:
    """Describes one key and signs with another."""

    def __init__(self) -> None:
        self.described, self.signing = InMemorySigner(), InMemorySigner()

    async def describe(self) -> KeyDescription:
        return await self.described.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        return await self.signing.sign(signing_input)

    async def aclose(self) -> None:
        pass


async def sign_and_verify(signer: Signer, capsys: pytest.CaptureFixture[str]) -> tuple[Check, str]:
    uri = "file:///configured.pem"
    doctor = doctor_for(client_id="svc", signer_uri=uri)
    doctor.method = "private_key_jwt"
    doctor.session._signers[uri] = signer
    await doctor.signer_checks()
    assert [(c.name, c.status) for c in doctor.checks] == [
        ("signer reachable", "PASS"),
        ("sign + verify", "FAIL"),
    ]
    return doctor.checks[-1], printed_fix(capsys)


@pytest_anyio
async def test_a_signer_that_signs_with_another_key_gets_the_mismatch_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    check, fix = await sign_and_verify(LyingSigner(), capsys)
    assert isinstance(check.error, SigningError)
    assert fix == SIGNATURE_MISMATCH_FIX and "--algorithm and any pinned key version" in fix


@pytest_anyio
async def test_a_provider_error_that_says_does_not_verify_gets_the_permissions_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A signer's own error is about its credentials, whatever its text says."""
    signer = InMemorySigner()
    signer.fail_next(SigningError("the HSM says the key does not verify its policy", code="KeyDisabled"))
    check, fix = await sign_and_verify(signer, capsys)
    assert isinstance(check.error, SigningError) and check.error.code == "KeyDisabled"
    assert fix.startswith("check that these credentials may read the public key and sign with it")
    assert "(provider code KeyDisabled)" in fix and fix != SIGNATURE_MISMATCH_FIX
