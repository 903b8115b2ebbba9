"""``keyless_m2m.cli._exit``: the exit code of each error class, and the one table that
``exit_code_for`` and the ``--help`` epilog are made from."""

from __future__ import annotations

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
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_CODES_HELP,
    EXIT_DISCOVERY,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OTHER,
    EXIT_REJECTED,
    EXIT_SIGNING,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    build_parser,
    exit_code_for,
)


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
        (BrokenPipeError(32, "Broken pipe"), 141),
    ],
)
def test_exit_code_per_error_class(error: BaseException, code: int) -> None:
    assert exit_code_for(error) == code


# -- one table ------------------------------------------------------------------------------

HELP_BEFORE_THE_TABLE = """\
exit codes:
  0  success
  1  any other error
  2  usage or configuration error (ConfigurationError, MissingExtraError)
  3  the authorization server refused the request (TokenRequestError: invalid_client, ...)
  4  the server or network is unavailable (TransportError, 5xx, 429, temporarily_unavailable)
  5  the signer failed (SigningError)
  6  discovery failed or the server's answer is invalid (DiscoveryError,
     InvalidTokenResponseError)
"""


def test_the_help_epilog_is_made_from_the_table() -> None:
    assert EXIT_CODES_HELP == HELP_BEFORE_THE_TABLE  # the text written by hand before the table
    for row in EXIT_CODES:
        assert (f"\n  {row.code}  {row.meaning}" in EXIT_CODES_HELP) is row.in_help


def test_every_exit_code_is_in_the_table_once() -> None:
    codes = [row.code for row in EXIT_CODES]
    assert len(set(codes)) == len(codes)
    assert set(codes) == {
        EXIT_OK,
        EXIT_OTHER,
        EXIT_USAGE,
        EXIT_REJECTED,
        EXIT_UNAVAILABLE,
        EXIT_SIGNING,
        EXIT_DISCOVERY,
        EXIT_INTERRUPTED,
        EXIT_BROKEN_PIPE,
    }
    for row in EXIT_CODES:  # each error class named in the table ends with its code
        for cls in row.errors:
            assert exit_code_for(cls.__new__(cls)) == row.code, (cls, row)


@pytest.mark.parametrize(
    "command", [[], ["token"], ["jwks"], ["certificate"], ["assertion"], ["doctor"], ["demo"]]
)
def test_every_help_ends_with_the_exit_codes(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.endswith("\n" + EXIT_CODES_HELP)
