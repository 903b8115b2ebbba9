"""``keyless-m2m assertion`` in a subprocess: the assertion verifies, independently, with
the key's public JWK and the embedded server's token endpoint as its audience."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import cli, env_for, jwk_of
from tests.helpers import verify_jws

pytestmark = pytest.mark.integration


def test_cli_assertion_decode(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("assertion", "--decode", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    claims = verify_jws(data["assertion"], jwk_of("p256", "ES256"), audience=server.token_endpoint)
    assert claims == data["claims"] and claims["iss"] == claims["sub"] == "svc"
    assert data["header"]["alg"] == "ES256"

    plain = cli("assertion", env=env_for(server, tmp_path))
    assert plain.returncode == 0
    verify_jws(plain.stdout.strip(), jwk_of("p256", "ES256"), audience=server.token_endpoint)
