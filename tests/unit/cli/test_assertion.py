"""``keyless-m2m assertion`` in-process, no network: the assertion verifies
independently, for the token endpoint or the issuer, and what it needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m.cli import (
    ENV_CLIENT_SECRET,
    run,
)
from tests.cli_runner import key_uri
from tests.helpers import verify_jws

TOKEN_ENDPOINT = "https://auth.example/oauth2/token"
ISSUER = "https://auth.example"
pytest_anyio = pytest.mark.anyio


def _decoded(out: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out)
    assert set(data) == {"header", "claims", "assertion"}
    return data


@pytest_anyio
async def test_assertion_decode_verifies_independently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uri = key_uri(tmp_path, "p256")
    argv = [
        "assertion",
        "--decode",
        "--client-id",
        "svc",
        "--signer",
        uri,
        "--token-endpoint",
        TOKEN_ENDPOINT,
    ]
    assert await run(argv, environ={}) == 0
    data = _decoded(capsys.readouterr().out)
    assert await run(["jwks", uri], environ={}) == 0
    public = json.loads(capsys.readouterr().out)["keys"][0]
    claims = verify_jws(data["assertion"], public, audience=TOKEN_ENDPOINT)
    assert claims == data["claims"]
    assert claims["iss"] == claims["sub"] == "svc"
    assert data["header"] == {"alg": "ES256", "kid": public["kid"], "typ": "JWT"}


@pytest_anyio
async def test_assertion_for_the_issuer_needs_no_network(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["assertion", "--client-id", "svc", "--signer", key_uri(tmp_path, "ed25519"), "--issuer", ISSUER]
    assert await run([*argv, "--assertion-aud", "issuer"], environ={}) == 0
    assertion = capsys.readouterr().out.strip()
    assert assertion.count(".") == 2
    assert await run(["jwks", key_uri(tmp_path, "ed25519")], environ={}) == 0
    public = json.loads(capsys.readouterr().out)["keys"][0]
    assert verify_jws(assertion, public, audience=ISSUER)["aud"] == ISSUER


@pytest_anyio
async def test_assertion_needs_a_signer_and_an_audience(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = {ENV_CLIENT_SECRET: "a-client-secret-value"}
    assert (
        await run(["assertion", "--client-id", "svc", "--token-endpoint", TOKEN_ENDPOINT], environ=secret)
        == 2
    )
    err = capsys.readouterr().err
    assert "needs private_key_jwt" in err and "a-client-secret-value" not in err
    assert await run(["assertion", "--client-id", "svc", "--signer", key_uri(tmp_path)], environ={}) == 2
    assert "--token-endpoint or --issuer" in capsys.readouterr().err
    argv = ["assertion", "--client-id", "svc", "--signer", key_uri(tmp_path), "--assertion-aud", "issuer"]
    assert await run([*argv, "--token-endpoint", TOKEN_ENDPOINT], environ={}) == 2
    assert "needs --issuer" in capsys.readouterr().err
