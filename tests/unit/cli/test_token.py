"""``keyless-m2m token`` in-process without a server: what it needs, and plain http
refused for remote hosts. Runs against real servers are in
``tests/integration/cli/test_token.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyless_m2m.cli import (
    run,
)
from tests.cli_runner import key_uri

pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_token_without_a_server_names_both_ways(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = await run(["token", "--client-id", "svc", "--signer", key_uri(tmp_path)], environ={})
    assert code == 2
    err = capsys.readouterr().err
    assert "--token-endpoint" in err and "--issuer" in err


@pytest_anyio
async def test_plain_http_is_refused_for_remote_hosts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [
        "token",
        "--client-id",
        "svc",
        "--signer",
        key_uri(tmp_path),
        "--token-endpoint",
        "http://auth.example/t",
    ]
    assert await run(argv, environ={}) == 2
    assert "refusing plain http://" in capsys.readouterr().err
