"""``keyless-m2m jwks`` in-process: the JWKS of the signers named (or
``KEYLESS_M2M_SIGNER``), a key named twice listed once, and its usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyless_m2m.cli import (
    ENV_SIGNER,
    run,
)
from tests.cli_runner import key_uri

pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_jwks_prints_a_jwks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ec_uri, rsa_uri = key_uri(tmp_path, "p256"), key_uri(tmp_path, "rsa")
    assert await run(["jwks", ec_uri, rsa_uri, ec_uri], environ={}) == 0
    jwks = json.loads(capsys.readouterr().out)
    assert [k["kty"] for k in jwks["keys"]] == ["EC", "RSA"]  # the repeated key once
    for key in jwks["keys"]:
        assert {"kid", "alg", "use"} <= key.keys() and "d" not in key


@pytest_anyio
async def test_jwks_takes_the_signer_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await run(["jwks", "--algorithm", "PS256"], environ={ENV_SIGNER: key_uri(tmp_path, "rsa")}) == 0
    assert json.loads(capsys.readouterr().out)["keys"][0]["alg"] == "PS256"


@pytest_anyio
async def test_jwks_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert await run(["jwks"], environ={}) == 2
    assert "jwks URI" in capsys.readouterr().err
    assert await run(["jwks", "s3://bucket/key"], environ={}) == 2
    err = capsys.readouterr().err
    assert "unknown signer URI scheme 's3'" in err and "awskms" in err and "hashivault" in err
    assert await run(["jwks", "--algorithm", "ES384", key_uri(tmp_path, "p256")], environ={}) == 2
    assert "ES384 does not fit" in capsys.readouterr().err


@pytest_anyio
async def test_jwks_takes_signers_with_the_signer_flag_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # issue 20: token takes --signer, jwks only positional URIs; jwks takes both (flags first).
    ec_uri, rsa_uri = key_uri(tmp_path, "p256"), key_uri(tmp_path, "rsa")
    assert await run(["jwks", "--signer", ec_uri], environ={}) == 0
    assert [k["kty"] for k in json.loads(capsys.readouterr().out)["keys"]] == ["EC"]
    assert await run(["jwks", rsa_uri, "--signer", ec_uri, "--signer", ec_uri], environ={}) == 0
    assert [k["kty"] for k in json.loads(capsys.readouterr().out)["keys"]] == ["EC", "RSA"]
    # named on the command line, the environment's signer is not added
    assert await run(["jwks", "--signer", ec_uri], environ={ENV_SIGNER: rsa_uri}) == 0
    assert [k["kty"] for k in json.loads(capsys.readouterr().out)["keys"]] == ["EC"]
