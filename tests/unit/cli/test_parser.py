"""``keyless_m2m.cli._parser``: a secret on the command line is refused without echoing
it, ``--debug`` before or after the command, option types."""

from __future__ import annotations

import pytest

from keyless_m2m.cli import (
    build_parser,
)


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


@pytest.mark.parametrize("argv", [["--debug", "token"], ["token", "--debug"]])
def test_debug_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).debug is True


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_timeout_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["token", "--timeout", value])
    assert exited.value.code == 2  # usage
    assert "--timeout" in capsys.readouterr().err


def test_demo_needs_no_arguments() -> None:
    args = build_parser().parse_args(["demo"])
    assert args.concurrency == 10_000 and args.signer is None


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


NOT_FOR_AN_ASSERTION = (
    "--scope",
    "--resource",
    "--audience",
    "--dpop",
    "--dpop-key",
    "--client-secret-file",
    "--client-cert",
    "--client-key",
    "--client-key-password-file",
    "--auth-method",
)


def test_each_command_lists_only_the_options_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    # issue 20: `assertion --help` listed the token request's options, which it ignores.
    shown = set(_help(["assertion"], capsys).replace(",", " ").split())
    assert {"--signer", "--client-id", "--issuer", "--token-endpoint", "--assertion-aud"} <= shown
    assert {"--algorithm", "--allow-insecure-http", "--ca-bundle", "--timeout"} <= shown
    assert not shown & set(NOT_FOR_AN_ASSERTION)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["assertion", "--scope", "a"])
    token = set(_help(["token"], capsys).replace(",", " ").split())
    assert set(NOT_FOR_AN_ASSERTION) | {"--signer", "--assertion-aud"} <= token
    assert {"--signer", "--algorithm"} <= set(_help(["jwks"], capsys).split())


@pytest.mark.parametrize("command", ["demo", "token", "proof", "jwks", "certificate", "assertion", "doctor"])
def test_help_is_wrapped_to_the_terminal_and_the_exit_codes_keep_their_layout(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 20: descriptions were printed as one unwrapped line each.
    from keyless_m2m.cli import EXIT_CODES_HELP

    monkeypatch.setenv("COLUMNS", "80")
    text = _help([command], capsys)
    body, epilog = text.split("exit codes:\n")
    assert max(len(line) for line in body.splitlines()) <= 80, body
    assert "exit codes:\n" + epilog.rstrip("\n") == EXIT_CODES_HELP.rstrip("\n")
