"""``keyless_m2m.cli._settings``: flags win over ``KEYLESS_M2M_*`` variables, empty
variables are unset, a client secret comes from the environment or a file (never shown),
and the authentication method follows the credentials."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from keyless_m2m import (
    ConfigurationError,
)
from keyless_m2m.cli import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_ISSUER,
    ENV_SCOPE,
    ENV_SIGNER,
    ENV_TOKEN_ENDPOINT,
    Settings,
    build_parser,
    settings_from,
)

TOKEN_ENDPOINT = "https://auth.example/oauth2/token"


def parse(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(argv), environ or {})


def test_flags_win_over_environment_variables() -> None:
    environ = {
        ENV_TOKEN_ENDPOINT: "https://env.example/token",
        ENV_ISSUER: "https://env.example",
        ENV_CLIENT_ID: "env-client",
        ENV_SIGNER: "file:///env.pem",
        ENV_SCOPE: "env.scope",
    }
    settings = parse(
        "token",
        "--token-endpoint",
        TOKEN_ENDPOINT,
        "--client-id",
        "flag-client",
        "--scope",
        "a b",
        environ=environ,
    )
    assert settings.token_endpoint == TOKEN_ENDPOINT
    assert settings.client_id == "flag-client"
    assert settings.scope == "a b"
    # not given as flags: from the environment
    assert settings.issuer == "https://env.example"
    assert settings.signer_uri == "file:///env.pem"


def test_environment_variables_alone_configure_a_command() -> None:
    environ = {
        ENV_TOKEN_ENDPOINT: TOKEN_ENDPOINT,
        ENV_CLIENT_ID: "svc",
        ENV_CLIENT_SECRET: "env-secret-value",
        ENV_SCOPE: "pockets.read",
    }
    settings = parse("token", environ=environ)
    assert (settings.token_endpoint, settings.client_id, settings.scope) == (
        TOKEN_ENDPOINT,
        "svc",
        "pockets.read",
    )
    assert settings.client_secret == "env-secret-value"
    assert settings.client_secret_source == ENV_CLIENT_SECRET
    assert settings.method() == "client_secret_basic"


def test_empty_environment_variables_count_as_unset() -> None:
    settings = parse("token", environ={ENV_CLIENT_ID: "  ", ENV_SIGNER: ""})
    assert settings.client_id is None and settings.signer_uri is None


def test_secret_file_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-value\n")
    settings = parse("token", "--client-secret-file", str(secret_file), environ={ENV_CLIENT_SECRET: "env"})
    assert settings.client_secret == "file-secret-value"  # the file wins, newline dropped
    assert settings.client_secret_source == "--client-secret-file"

    monkeypatch.setattr("sys.stdin", io.StringIO("stdin-secret-value\n"))
    assert parse("token", "--client-secret-file", "-").client_secret == "stdin-secret-value"

    with pytest.raises(ConfigurationError, match="cannot read"):
        parse("token", "--client-secret-file", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        parse("token", "--client-secret-file", str(tmp_path / "empty"))


def test_settings_repr_hides_the_secret() -> None:
    settings = parse("token", environ={ENV_CLIENT_SECRET: "do-not-show-me"})
    assert "do-not-show-me" not in repr(settings)


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--signer", "file:///k.pem"], {}, "private_key_jwt"),
        ([], {ENV_CLIENT_SECRET: "s"}, "client_secret_basic"),
        (["--signer", "file:///k.pem"], {ENV_CLIENT_SECRET: "s"}, "private_key_jwt"),
        (["--auth-method", "client_secret_post"], {ENV_CLIENT_SECRET: "s"}, "client_secret_post"),
    ],
)
def test_auth_method_follows_the_credentials(argv: list[str], environ: dict[str, str], expected: str) -> None:
    assert parse("token", *argv, environ=environ).method() == expected


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        ([], {}, "no client credentials"),
        (["--auth-method", "private_key_jwt"], {ENV_CLIENT_SECRET: "s"}, "needs a signer"),
        (["--auth-method", "client_secret_basic", "--signer", "file:///k.pem"], {}, "needs a client secret"),
    ],
)
def test_auth_method_without_its_credentials(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse("token", *argv, environ=environ).method()
