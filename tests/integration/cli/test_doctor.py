"""``keyless-m2m doctor`` in a subprocess against the embedded server and oidc-provider:
every check passing, and the failure and fix for a wrong client id, a wrong key, an
algorithm the client is not registered for, and one the server does not support."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import cli, env_for, jwk_of, key_uri, op_env
from tests.helpers import pem_of
from tests.metadata_server import CustomMetadataServer
from tests.oidc_provider.clients import AuthServer

pytestmark = pytest.mark.integration


def test_cli_doctor_passes(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("doctor", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "configuration",
        "signer reachable",
        "sign + verify",
        "metadata reachable",
        "method and alg",
        "clock skew",
        "token obtained",
    ):
        assert any(line.startswith("PASS") and name in line for line in lines), result.stdout
    assert lines[-1] == "doctor: all 7 checks passed"
    assert server.issued[-1] not in result.stdout  # doctor never shows the token


def test_cli_doctor_wrong_client_id(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("doctor", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert result.returncode == 3
    out = result.stdout
    assert "FAIL  token obtained" in out and "InvalidClientError" in out
    fix = next(line for line in out.splitlines() if "fix:" in line)
    assert "client 'nobody'" in fix and "keyless-m2m jwks" in fix
    assert out.splitlines()[-1] == "doctor: 1 of 7 checks failed"


def test_cli_doctor_wrong_key(server: AuthorizationServer, tmp_path: Path) -> None:
    # "svc" is registered with the session's P-256 key; this signer holds another one.
    other = tmp_path / "other.pem"
    other.write_bytes(pem_of(ec.generate_private_key(ec.SECP256R1())))
    result = cli("doctor", env=env_for(server, tmp_path, KEYLESS_M2M_SIGNER=other.as_uri()))
    assert result.returncode == 3
    lines = result.stdout.splitlines()
    for name in ("signer reachable", "sign + verify", "method and alg"):  # the key itself is fine
        assert any(line.startswith("PASS") and name in line for line in lines), result.stdout
    failed = next(line for line in lines if line.startswith("FAIL"))
    assert failed.startswith("FAIL  token obtained") and "InvalidClientError" in failed
    # the server's own reason, passed through
    assert "the signature does not verify with client 'svc''s registered keys" in failed
    description = LocalSigner.from_pem_file(other)._description
    assert description is not None
    kid = description.key_id
    fix = next(line for line in lines if "fix:" in line)
    assert f"registered JWKS holds this key (kid {kid!r}" in fix
    assert f"keyless-m2m jwks {other.as_uri()}" in fix
    assert lines[-1] == "doctor: 1 of 7 checks failed"
    assert server.issued == []


def test_cli_doctor_alg_the_key_is_not_registered_for(tmp_path: Path) -> None:
    with AuthorizationServer() as srv:
        srv.register_client("svc", public_jwk=jwk_of("rsa", "RS256"))
        env = {**env_for(srv, tmp_path, KEYLESS_M2M_SIGNER=key_uri(tmp_path, "rsa")), "KEYLESS_M2M_SCOPE": ""}
        assert cli("doctor", env=env).returncode == 0
        result = cli("doctor", "--algorithm", "PS256", env=env)  # the right key, another alg
        assert result.returncode == 3
        assert "PASS  method and alg" in result.stdout  # the server supports PS256 in general...
        assert "keys are registered for RS256, not PS256" in result.stdout  # ...not for this client
        assert "is registered for PS256" in result.stdout  # the fix names what to check
        assert len(srv.issued) == 1


def test_cli_doctor_unsupported_alg(tmp_path: Path) -> None:
    def rsa_only(document: dict[str, Any]) -> None:
        document["token_endpoint_auth_signing_alg_values_supported"] = ["RS256", "PS256"]

    with CustomMetadataServer(rsa_only) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer)
        result = cli("doctor", env=env)
        # The metadata leaves ES256 out, yet the server accepts it: a warning, and a token.
        assert result.returncode == 0, result.stdout
        assert "WARN  method and alg" in result.stdout
        assert "it accepts: RS256, PS256" in result.stdout and "--algorithm" in result.stdout
        assert "PASS  token obtained" in result.stdout

        token = cli("token", env={**env, "KEYLESS_M2M_TOKEN_ENDPOINT": ""})  # through discovery
        assert token.returncode == 0, token.stderr
        assert token.stdout.strip() == srv.issued[-1]
        assert "accepts: RS256, PS256" in token.stderr and "strict_metadata=True" in token.stderr
        assert srv.token_requests == 2


def test_cli_doctor_and_token_for_metadata_without_the_grant(tmp_path: Path) -> None:
    """A deployed server's metadata omits client_credentials although it issues such tokens."""

    def no_grant(document: dict[str, Any]) -> None:
        document["grant_types_supported"] = ["authorization_code"]

    with CustomMetadataServer(no_grant) as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer)
        result = cli("doctor", env=env)
        assert result.returncode == 0, result.stdout
        assert "WARN  method and alg" in result.stdout and "client_credentials" in result.stdout
        token = cli("token", env={**env, "KEYLESS_M2M_TOKEN_ENDPOINT": ""})
        assert token.returncode == 0, token.stderr
        assert token.stdout.strip() == srv.issued[-1]


def test_cli_doctor_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    good = cli("doctor", env=op_env(oidc_provider.issuer, tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-1] == "doctor: all 7 checks passed"

    wrong_id = cli(
        "doctor", env={**op_env(oidc_provider.issuer, tmp_path), "KEYLESS_M2M_CLIENT_ID": "nobody"}
    )
    assert wrong_id.returncode == 3
    assert "FAIL  token obtained" in wrong_id.stdout and "client 'nobody'" in wrong_id.stdout

    # a key the client does not have registered
    wrong_key = cli("doctor", env=op_env(oidc_provider.issuer, tmp_path, "RS256", "rsa-b"))
    assert wrong_key.returncode == 3
    assert "FAIL  token obtained" in wrong_key.stdout and "holds this key (kid" in wrong_key.stdout

    # the right key with an alg the client is not registered for (RS256)
    wrong_alg = cli(
        "doctor", "--algorithm", "PS256", env=op_env(oidc_provider.issuer, tmp_path, "RS256", "rsa")
    )
    assert wrong_alg.returncode == 3
    assert "PASS  method and alg" in wrong_alg.stdout  # the server supports PS256 in general...
    assert "is registered for PS256" in wrong_alg.stdout  # ...but not for this client
