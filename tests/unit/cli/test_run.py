"""``keyless_m2m.cli.run``, in-process on asyncio and trio: usage errors, ``--help`` and
``--version``, one stderr line per error (``--debug``: the traceback), errors inside
exception groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyless_m2m import (
    InvalidClientError,
    TransportError,
)
from keyless_m2m.cli import (
    ENV_CLIENT_ID,
    ENV_SIGNER,
    _leaf,
    run,
)
from tests.cli_runner import key_uri

pytest_anyio = pytest.mark.anyio


def test_errors_inside_exception_groups_are_unwrapped() -> None:
    inner = InvalidClientError("invalid_client", status_code=401)
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [inner, TransportError("x")])])
    assert _leaf(group) is inner


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
async def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["token", "--debug"], environ={}) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("keyless-m2m: ConfigurationError: no client id")


@pytest_anyio
async def test_the_http_refusal_names_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # issue 20: the CLI told its users to pass allow_insecure_http=True, a Python argument.
    argv = [
        "token",
        "--client-id",
        "a",
        "--signer",
        key_uri(tmp_path),
        "--token-endpoint",
        "http://example.com/t",
    ]
    assert await run(argv, environ={}) == 2
    err = capsys.readouterr().err
    assert "--allow-insecure-http" in err and "allow_insecure_http=True" not in err


class _ClosedStdout:
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest_anyio
async def test_a_closed_stdout_is_exit_141_without_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout", _ClosedStdout())
    assert await run(["jwks", key_uri(tmp_path)], environ={}) == 141
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
