"""``keyless-m2m jwks`` in a subprocess: what it prints is what the authorization server
needs, registered with the embedded server and with oidc-provider, then used for a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import cli, env_for, key_uri, one_line_error
from tests.helpers import missing_server
from tests.oidc_provider import harness
from tests.oidc_provider.clients import public_jwk_of

pytestmark = pytest.mark.integration


def test_cli_jwks(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("jwks", key_uri(tmp_path, "p256"), key_uri(tmp_path, "rsa"), "--algorithm", "RS256")
    assert result.returncode == 2  # RS256 does not fit the EC key
    assert "RS256 does not fit" in one_line_error(result, "ConfigurationError")

    result = cli("jwks", key_uri(tmp_path, "p256"), key_uri(tmp_path, "ed25519"))
    assert result.returncode == 0, result.stderr
    jwks = json.loads(result.stdout)
    assert [k["alg"] for k in jwks["keys"]] == ["ES256", "EdDSA"]
    for key in jwks["keys"]:
        jwt.PyJWK.from_dict(key)  # each is a valid public JWK
        assert "d" not in key
    # what the CLI prints is what the server needs: register it, get a token with that key
    server.register_client("from-jwks", jwks=jwks)
    token = cli("token", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="from-jwks"))
    assert token.returncode == 0, token.stderr


def test_cli_jwks_is_accepted_by_oidc_provider(tmp_path: Path) -> None:
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    printed = cli("jwks", key_uri(tmp_path, "p384"), key_uri(tmp_path, "ed25519"))
    assert printed.returncode == 0, printed.stderr
    jwks = json.loads(printed.stdout)
    clients = [
        {
            "client_id": f"from-cli-{alg.lower()}",
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": alg,
            "jwks": jwks,
            "scope": "pockets.read",
        }
        for alg in ("ES384", "EdDSA")
    ]
    with harness.start_oidc_provider(clients, ["pockets.read"]) as op:
        for alg, kind in (("ES384", "p384"), ("EdDSA", "ed25519")):
            env = {
                "KEYLESS_M2M_ISSUER": op.issuer,
                "KEYLESS_M2M_CLIENT_ID": f"from-cli-{alg.lower()}",
                "KEYLESS_M2M_SIGNER": key_uri(tmp_path, kind),
            }
            result = cli("token", env=env)
            assert result.returncode == 0, result.stderr
    assert public_jwk_of("p384")["x"] == jwks["keys"][0]["x"]


def test_a_closed_stdout_ends_the_command_quietly_with_141(tmp_path: Path) -> None:
    # issue 20: `keyless-m2m jwks | head -0` printed "unexpected error: BrokenPipeError".
    # Exit 141 (128 + SIGPIPE) as a shell reports for a writer cut short; nothing on stderr.
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write is EPIPE
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "keyless_m2m", "jwks", key_uri(tmp_path)],
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=environ,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 141
    assert result.stderr == ""
