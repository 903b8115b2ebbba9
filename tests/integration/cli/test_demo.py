"""``keyless-m2m demo`` in a subprocess: the whole flow against its embedded server, with
a throwaway key and with a real signer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_runner import cli, key_uri

pytestmark = pytest.mark.integration


def test_cli_demo() -> None:
    result = cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "10,000 concurrent get_token() calls -> 1 token request, 1 signature" in out
    assert "every caller got the same token" in out
    assert "a new token, 2 token requests in total" in out
    assert '"alg":"ES256"' in out and '"iss":"demo-client"' in out
    assert "the server is stopped" in out
    assert result.stderr == ""


def test_cli_demo_with_a_real_signer(tmp_path: Path) -> None:
    result = cli("demo", "--signer", key_uri(tmp_path, "rsa"), "--algorithm", "PS256", "--concurrency", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50 concurrent get_token() calls -> 1 token request" in result.stdout
    assert "alg PS256" in result.stdout
