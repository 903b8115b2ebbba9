"""``keyless-m2m token`` with mutual TLS (RFC 8705), run in a subprocess against
:class:`~keyless_m2m.testing.mtls_server.MutualTlsAuthorizationServer`: ``--auth-method
tls_client_auth --client-cert FILE --client-key FILE`` (and the ``KEYLESS_M2M_CLIENT_*``
variables, an encrypted key's password from a file), the token bound to the certificate;
a server that requires a certificate refuses a client without one, exit 4 with one line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyless_m2m.testing.mtls_server import MutualTlsAuthorizationServer
from keyless_m2m.testing.tls import TestAuthority
from tests.cli_runner import cli, one_line_error

pytestmark = pytest.mark.integration

PASSWORD = "cli-key-password-93b1"


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return TestAuthority(str(tmp_path))


@pytest.fixture
def server(authority: TestAuthority) -> Iterator[MutualTlsAuthorizationServer]:
    with MutualTlsAuthorizationServer(authority) as server:
        yield server


def test_cli_token_with_tls_client_auth(
    authority: TestAuthority, server: MutualTlsAuthorizationServer, tmp_path: Path
) -> None:
    client = authority.issue_client("cli-client", password=PASSWORD)
    server.register_tls_client("cli-client", subject_dn=client.subject_dn)
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    env = {"KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint, "KEYLESS_M2M_CLIENT_ID": "cli-client"}
    result = cli(
        "token",
        "--auth-method",
        "tls_client_auth",
        "--client-cert",
        client.certificate,
        "--client-key",
        client.key,
        "--client-key-password-file",
        str(password_file),
        "--ca-bundle",
        authority.ca_file,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert server.bindings[token] == client.thumbprint
    # the same through the environment, the method implied by the certificate
    env |= {
        "KEYLESS_M2M_CLIENT_CERT": client.certificate,
        "KEYLESS_M2M_CLIENT_KEY": client.key,
        "KEYLESS_M2M_CLIENT_KEY_PASSWORD": PASSWORD,
    }
    again = cli("token", "--ca-bundle", authority.ca_file, env=env)
    assert again.returncode == 0, again.stderr
    assert server.bindings[again.stdout.strip()] == client.thumbprint
    assert PASSWORD not in result.stderr + again.stderr


def test_cli_self_signed_and_a_wrong_password(
    authority: TestAuthority, server: MutualTlsAuthorizationServer, tmp_path: Path
) -> None:
    from keyless_m2m.testing.tls import self_signed_client

    mine = self_signed_client(str(tmp_path), "cli-self", password=PASSWORD)
    server.register_tls_client("cli-self", self_signed_pem=mine.pem)
    env = {
        "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "cli-self",
        "KEYLESS_M2M_CLIENT_CERT": mine.certificate,
        "KEYLESS_M2M_CLIENT_KEY": mine.key,
        "KEYLESS_M2M_CLIENT_KEY_PASSWORD": PASSWORD,
    }
    args = ("token", "--auth-method", "self_signed_tls_client_auth", "--ca-bundle", authority.ca_file)
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert server.bindings[result.stdout.strip()] == mine.thumbprint
    wrong = cli(*args, env=env | {"KEYLESS_M2M_CLIENT_KEY_PASSWORD": "not-" + PASSWORD})
    assert wrong.returncode != 0
    line = one_line_error(wrong, "ConfigurationError")
    assert "wrong password" in line and PASSWORD not in wrong.stderr + wrong.stdout


def test_cli_without_a_certificate_at_a_server_that_requires_one(authority: TestAuthority) -> None:
    with MutualTlsAuthorizationServer(authority, require_certificate=True) as server:
        server.register_client("svc", client_secret="cli-secret-for-this-test")
        env = {
            "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
            "KEYLESS_M2M_CLIENT_ID": "svc",
            "KEYLESS_M2M_CLIENT_SECRET": "cli-secret-for-this-test",
        }
        result = cli("token", "--ca-bundle", authority.ca_file, env=env)
    assert result.returncode == 4, result.stderr
    assert "requires a TLS client certificate" in one_line_error(result, "TransportError")
