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
