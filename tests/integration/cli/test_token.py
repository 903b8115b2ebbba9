"""``keyless-m2m token`` run as a user would (``python -m keyless_m2m`` in a subprocess)
against the embedded loopback server and oidc-provider: the token on stdout, client
secrets never shown, and each failure one stderr line with its exit code (3 refused, 4
unreachable, 6 discovery)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.cli_runner import cli, env_for, jwk_of, one_line_error, op_env
from tests.helpers import verify_jws
from tests.hostile_server import Answer, HostileServer
from tests.metadata_server import CustomMetadataServer
from tests.oidc_provider.clients import SECRET, AuthServer

pytestmark = pytest.mark.integration


def test_cli_token(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == server.issued[-1]
    assert result.stderr == ""


def test_cli_token_json_and_python_m(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", "--json", env=env_for(server, tmp_path))
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["access_token"] == server.issued[-1]
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "pockets.read"


def test_cli_token_through_the_issuer(server: AuthorizationServer, tmp_path: Path) -> None:
    env = env_for(server, tmp_path, KEYLESS_M2M_ISSUER=server.issuer)
    del env["KEYLESS_M2M_TOKEN_ENDPOINT"]
    result = cli("token", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == server.issued[-1]


def test_cli_token_with_a_client_secret_never_shows_it(server: AuthorizationServer, tmp_path: Path) -> None:
    env = {
        "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "secret-client",
        "KEYLESS_M2M_CLIENT_SECRET": SECRET,
    }
    ok = cli("token", "--json", env=env)
    assert ok.returncode == 0 and SECRET not in ok.stdout + ok.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    del env["KEYLESS_M2M_CLIENT_SECRET"]
    post = cli(
        "token", "--auth-method", "client_secret_post", "--client-secret-file", str(secret_file), env=env
    )
    assert post.returncode == 0, post.stderr
    env["KEYLESS_M2M_CLIENT_SECRET"] = "wrong-" + SECRET
    wrong = cli("token", "--debug", env=env)
    assert wrong.returncode == 3
    assert SECRET not in wrong.stdout + wrong.stderr  # not even with --debug


def test_cli_rejected_client_is_exit_3_in_one_line(server: AuthorizationServer, tmp_path: Path) -> None:
    result = cli("token", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert result.returncode == 3
    assert result.stdout == ""
    line = one_line_error(result, "InvalidClientError")
    assert "invalid_client" in line

    debug = cli("token", "--debug", env=env_for(server, tmp_path, KEYLESS_M2M_CLIENT_ID="nobody"))
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_cli_unreachable_server_is_exit_4(tmp_path: Path) -> None:
    srv = AuthorizationServer()
    env = env_for(srv, tmp_path)
    srv.stop()  # never started: nothing listens on its port
    result = cli("token", "--timeout", "2", env=env)
    assert result.returncode == 4
    assert "cannot reach the token endpoint" in one_line_error(result, "TransportError")


def test_cli_unsupported_method_names_the_supported_ones(tmp_path: Path) -> None:
    def secrets_only(document: dict[str, Any]) -> None:
        document["token_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]

    with CustomMetadataServer(secrets_only) as srv:
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer, KEYLESS_M2M_TOKEN_ENDPOINT="")
        result = cli("token", env=env)
        # Metadata is not the last word: a warning naming what it lists, then the request
        # (refused here: the client is not registered).
        assert result.returncode == 3
        warning, error = result.stderr.strip().splitlines()
        assert warning.startswith("keyless-m2m: WARNING ") and "strict_metadata=True" in warning
        assert "'private_key_jwt'" in warning
        assert "supports: client_secret_basic, client_secret_post" in warning
        assert error.startswith("keyless-m2m: InvalidClientError: ")
        assert srv.token_requests == 2  # the issuer as aud, then the token endpoint URL


def test_cli_issuer_mismatch(tmp_path: Path) -> None:
    with CustomMetadataServer(lambda m: m.update(issuer="https://evil.example")) as srv:
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer, KEYLESS_M2M_TOKEN_ENDPOINT="")
        result = cli("token", env=env)
        assert result.returncode == 6
        assert "issuer mismatch" in one_line_error(result, "DiscoveryError")
        doctor = cli("doctor", env=env)
        assert doctor.returncode == 6 and "FAIL  metadata reachable" in doctor.stdout
        assert srv.token_requests == 0


def test_cli_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    env = op_env(oidc_provider.issuer, tmp_path)
    token = cli("token", env=env)
    assert token.returncode == 0, token.stderr
    assert token.stdout.strip() and token.stderr == ""

    body = cli("token", "--json", "--scope", "pockets.read transfers.read", env=env)
    assert body.returncode == 0, body.stderr
    data = json.loads(body.stdout)
    assert set(data["scope"].split()) == {"pockets.read", "transfers.read"} and data["token_type"] == "Bearer"

    rfc7523bis = cli("token", "--assertion-aud", "issuer", env=env)
    assert rfc7523bis.returncode == 0, rfc7523bis.stderr

    # the aud a token request sends first: the issuer, known from --issuer (rfc7523bis) ...
    decoded = cli("assertion", "--decode", env=env)
    assert decoded.returncode == 0, decoded.stderr
    assertion = json.loads(decoded.stdout)["assertion"]
    claims = verify_jws(assertion, jwk_of("p256", "ES256"), audience=oidc_provider.issuer)
    assert claims["iss"] == "jwt-es256"
    # ... or the token endpoint, found in the issuer's metadata
    legacy = cli("assertion", "--decode", "--assertion-aud", "token_endpoint", env=env)
    assert legacy.returncode == 0, legacy.stderr
    assertion = json.loads(legacy.stdout)["assertion"]
    verify_jws(assertion, jwk_of("p256", "ES256"), audience=oidc_provider.token_endpoint)


def test_cli_client_secrets_with_oidc_provider(oidc_provider: AuthServer, tmp_path: Path) -> None:
    env = {
        "KEYLESS_M2M_TOKEN_ENDPOINT": oidc_provider.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "secret-basic",
        "KEYLESS_M2M_CLIENT_SECRET": SECRET,
    }
    basic = cli("token", env=env)
    assert basic.returncode == 0, basic.stderr
    post = cli(
        "token", "--auth-method", "client_secret_post", env={**env, "KEYLESS_M2M_CLIENT_ID": "secret-post"}
    )
    assert post.returncode == 0, post.stderr
    scope = cli("token", "--scope", "admin", env=env)
    assert scope.returncode == 3 and "invalid_scope" in one_line_error(scope, "InvalidScopeError")
    for result in (basic, post, scope):
        assert SECRET not in result.stdout + result.stderr


def test_cli_a_refusal_without_a_reason_is_exit_3_with_its_fix(tmp_path: Path) -> None:
    """A gateway's empty 403 is a refusal (exit 3, one line), not a malformed answer (exit
    6), and is not retried; the doctor names the likely causes."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("refused-cli-secret\n")
    with HostileServer() as server:
        server.answers["/token"] = Answer(403, [("content-type", "text/html")], b"")
        args = ["--client-id", "svc", "--client-secret-file", str(secret_file)]
        args += ["--auth-method", "client_secret_basic", "--token-endpoint", server.url("/token")]
        token = cli("token", *args)
        assert token.returncode == 3, token.stderr
        line = one_line_error(token, "RefusedWithoutReasonError")
        assert "HTTP 403 (text/html)" in line and "refused-cli-secret" not in line
        assert server.requests.count("POST /token") == 1  # not retried
        doctor = cli("doctor", *args)
    assert doctor.returncode == 3, doctor.stdout + doctor.stderr
    assert "FAIL  token obtained" in doctor.stdout and "refused without saying why" in doctor.stdout
    assert "refused-cli-secret" not in doctor.stdout + doctor.stderr


def test_cli_audience_fallback_is_one_warning_line(tmp_path: Path) -> None:
    # A server that accepts only its token endpoint URL as aud: the token is printed, and
    # the fallback from the issuer identifier is said once on stderr, without --verbose.
    with AuthorizationServer(assertion_audience="token_endpoint") as srv:
        srv.register_client("svc", public_jwk=jwk_of("p256", "ES256"))
        env = env_for(srv, tmp_path, KEYLESS_M2M_ISSUER=srv.issuer)
        del env["KEYLESS_M2M_TOKEN_ENDPOINT"]
        result = cli("token", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == srv.issued[-1]
        (warning,) = result.stderr.strip().splitlines()
        assert warning.startswith("keyless-m2m: WARNING ")
        assert "aud = its token endpoint URL" in warning and "audience_policy='token_endpoint'" in warning
