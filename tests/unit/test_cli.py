"""The ``keyless-m2m`` command without a network: argument and environment parsing, exit
codes, and the commands that need no server (``jwks``, ``assertion``), run in-process on
asyncio and trio. Subprocess runs against real servers are in
``tests/integration/test_cli_and_discovery.py``."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m import (
    ConfigurationError,
    DiscoveryError,
    InvalidClientError,
    InvalidScopeError,
    InvalidTokenResponseError,
    ManagerClosedError,
    MissingExtraError,
    ServerError,
    SigningError,
    TemporarilyUnavailableError,
    TokenRequestError,
    TransportError,
)
from keyless_m2m.cli import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_ISSUER,
    ENV_SCOPE,
    ENV_SIGNER,
    ENV_TOKEN_ENDPOINT,
    Settings,
    _leaf,
    build_parser,
    exit_code_for,
    run,
    settings_from,
)
from tests.helpers import make_key, pem_of, verify_jws

TOKEN_ENDPOINT = "https://auth.example/oauth2/token"
ISSUER = "https://auth.example"


def key_file(tmp_path: Path, kind: str = "p256") -> str:
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(pem_of(make_key(kind)))
    return path.as_uri()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/token"


def parse(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return settings_from(build_parser().parse_args(argv), environ or {})


# -- parsing ----------------------------------------------------------------------------


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


@pytest.mark.parametrize("option", ["--client-secret", "--client-secret=", "--client-sec"])
def test_a_secret_on_the_command_line_is_refused_without_echo(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [option + "on-the-command-line"] if option.endswith("=") else [option, "on-the-command-line"]
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["token", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "on-the-command-line" not in err


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


@pytest.mark.parametrize("argv", [["--debug", "token"], ["token", "--debug"]])
def test_debug_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).debug is True


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_timeout_must_be_positive(value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["token", "--timeout", value])


def test_demo_needs_no_arguments() -> None:
    args = build_parser().parse_args(["demo"])
    assert args.concurrency == 10_000 and args.signer is None


# -- exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("bad"), 2),
        (MissingExtraError("aws", "boto3"), 2),
        (InvalidClientError("invalid_client", status_code=401), 3),
        (InvalidScopeError("invalid_scope", status_code=400), 3),
        (TokenRequestError("weird", status_code=400), 3),
        (TransportError("down"), 4),
        (TemporarilyUnavailableError("temporarily_unavailable", status_code=503), 4),
        (ServerError("server_error", status_code=500), 4),
        (InvalidTokenResponseError("HTTP 503", status_code=503, retryable=True), 4),
        (DiscoveryError("no metadata", retryable=True), 4),
        (SigningError("kms said no", code="AccessDeniedException"), 5),
        (SigningError("throttled", retryable=True), 5),
        (DiscoveryError("issuer mismatch"), 6),
        (InvalidTokenResponseError("not JSON", status_code=200), 6),
        (ManagerClosedError("closed"), 1),
        (RuntimeError("bug"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_code_per_error_class(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


def test_errors_inside_exception_groups_are_unwrapped() -> None:
    inner = InvalidClientError("invalid_client", status_code=401)
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner, TransportError("x")])])
    assert _leaf(group) is inner


# -- running commands in-process (asyncio and trio) -------------------------------------

pytest_anyio = pytest.mark.anyio


@pytest_anyio
async def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run([], environ={}) == 2
    assert await run(["frobnicate"], environ={}) == 2
    assert "usage:" in capsys.readouterr().err


@pytest_anyio
async def test_version_and_help_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["--version"], environ={}) == 0
    assert capsys.readouterr().out.startswith("keyless-m2m ")
    assert await run(["doctor", "--help"], environ={}) == 0
    out = capsys.readouterr().out
    assert ENV_SIGNER in out and "exit codes" in out


@pytest_anyio
async def test_missing_configuration_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["token"], environ={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("keyless-m2m: ConfigurationError: no client id")
    assert ENV_CLIENT_ID in captured.err

    assert await run(["token", "--client-id", "svc", "--signer", "file:///nope.pem"], environ={}) == 2
    assert "cannot read key file" in capsys.readouterr().err


@pytest_anyio
async def test_token_without_a_server_names_both_ways(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = await run(["token", "--client-id", "svc", "--signer", key_file(tmp_path)], environ={})
    assert code == 2
    err = capsys.readouterr().err
    assert "--token-endpoint" in err and "--issuer" in err


@pytest_anyio
async def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["token", "--debug"], environ={}) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("keyless-m2m: ConfigurationError: no client id")


@pytest_anyio
async def test_jwks_prints_a_jwks(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ec_uri, rsa_uri = key_file(tmp_path, "p256"), key_file(tmp_path, "rsa")
    assert await run(["jwks", ec_uri, rsa_uri, ec_uri], environ={}) == 0
    jwks = json.loads(capsys.readouterr().out)
    assert [k["kty"] for k in jwks["keys"]] == ["EC", "RSA"]  # the repeated key once
    for key in jwks["keys"]:
        assert {"kid", "alg", "use"} <= key.keys() and "d" not in key


@pytest_anyio
async def test_jwks_takes_the_signer_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await run(["jwks", "--algorithm", "PS256"], environ={ENV_SIGNER: key_file(tmp_path, "rsa")}) == 0
    assert json.loads(capsys.readouterr().out)["keys"][0]["alg"] == "PS256"


@pytest_anyio
async def test_jwks_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert await run(["jwks"], environ={}) == 2
    assert "jwks URI" in capsys.readouterr().err
    assert await run(["jwks", "s3://bucket/key"], environ={}) == 2
    err = capsys.readouterr().err
    assert "unknown signer URI scheme 's3'" in err and "awskms" in err and "hashivault" in err
    assert await run(["jwks", "--algorithm", "ES384", key_file(tmp_path, "p256")], environ={}) == 2
    assert "ES384 does not fit" in capsys.readouterr().err


def _decoded(out: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out)
    assert set(data) == {"header", "claims", "assertion"}
    return data


@pytest_anyio
async def test_assertion_decode_verifies_independently(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uri = key_file(tmp_path, "p256")
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
    argv = ["assertion", "--client-id", "svc", "--signer", key_file(tmp_path, "ed25519"), "--issuer", ISSUER]
    assert await run([*argv, "--assertion-aud", "issuer"], environ={}) == 0
    assertion = capsys.readouterr().out.strip()
    assert assertion.count(".") == 2
    assert await run(["jwks", key_file(tmp_path, "ed25519")], environ={}) == 0
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
    assert await run(["assertion", "--client-id", "svc", "--signer", key_file(tmp_path)], environ={}) == 2
    assert "--token-endpoint or --issuer" in capsys.readouterr().err
    argv = ["assertion", "--client-id", "svc", "--signer", key_file(tmp_path), "--assertion-aud", "issuer"]
    assert await run([*argv, "--token-endpoint", TOKEN_ENDPOINT], environ={}) == 2
    assert "needs --issuer" in capsys.readouterr().err


@pytest_anyio
async def test_plain_http_is_refused_for_remote_hosts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [
        "token",
        "--client-id",
        "svc",
        "--signer",
        key_file(tmp_path),
        "--token-endpoint",
        "http://auth.example/t",
    ]
    assert await run(argv, environ={}) == 2
    assert "refusing plain http://" in capsys.readouterr().err


@pytest_anyio
async def test_doctor_reports_configuration_gaps(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["doctor"], environ={}) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  configuration")
    assert ENV_CLIENT_ID in out and ENV_SIGNER in out and ENV_TOKEN_ENDPOINT in out
    assert "fix:" in out
    assert "SKIP  token obtained" in out


@pytest_anyio
async def test_doctor_reports_a_signer_that_cannot_load(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    # The metadata check goes to the network: point it at a loopback port nobody listens on.
    argv = ["doctor", "--client-id", "svc", "--signer", bad.as_uri(), "--token-endpoint", closed_port_url()]
    assert await run([*argv, "--timeout", "2"], environ={}) == 2
    out = capsys.readouterr().out
    assert "FAIL  signer reachable" in out and "is not a valid PEM private key" in out
    assert "SKIP  sign + verify" in out and "SKIP  token obtained" in out
