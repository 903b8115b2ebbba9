"""The ``keyless-m2m`` command (also ``python -m keyless_m2m``).

Subcommands::

    keyless-m2m demo                      the whole flow against an embedded loopback server
    keyless-m2m token [--json]            print an access token (or the whole token response)
    keyless-m2m proof METHOD URL          print a DPoP proof for one request with a bound token
    keyless-m2m jwks URI [URI ...]        print the public JWKS of signers, to register
    keyless-m2m certificate URI           a self-signed certificate for a key, signed in the KMS
    keyless-m2m assertion [--decode]      mint one client assertion
    keyless-m2m doctor                    check a configuration end to end, with fixes

Configuration comes from flags or environment variables (flags win):
``KEYLESS_M2M_TOKEN_ENDPOINT``, ``KEYLESS_M2M_ISSUER``, ``KEYLESS_M2M_CLIENT_ID``,
``KEYLESS_M2M_SIGNER`` (a signer URI), ``KEYLESS_M2M_CLIENT_SECRET``, ``KEYLESS_M2M_SCOPE``,
``KEYLESS_M2M_DPOP_KEY`` (the DPoP proof key's signer URI).
A client secret is read from the environment or a file, never from the command line,
where other users of the machine could read it.

Results go to stdout, messages to stderr. An error is one line on stderr naming the typed
error (``--debug`` adds the traceback and debug logs), and the exit code says which kind:
the table is ``EXIT_CODES`` in ``_exit`` (``keyless-m2m --help`` prints it).

One module per concern: ``_exit`` (exit codes), ``_settings`` (flags and environment),
``_parser`` (argparse), ``_session`` (signers, client auth, managers), ``_output``
(stdout/stderr), and one per command: ``_token``, ``_proof``, ``_jwks``, ``_certificate``, ``_assertion``,
``_doctor``, ``_demo``. This module runs a command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from ..errors import KeylessM2MError
from ._exit import EXIT_BROKEN_PIPE as EXIT_BROKEN_PIPE
from ._exit import EXIT_CODES as EXIT_CODES
from ._exit import EXIT_CODES_HELP as EXIT_CODES_HELP
from ._exit import EXIT_DISCOVERY as EXIT_DISCOVERY
from ._exit import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from ._exit import EXIT_OK as EXIT_OK
from ._exit import EXIT_OTHER as EXIT_OTHER
from ._exit import EXIT_REJECTED as EXIT_REJECTED
from ._exit import EXIT_SIGNING as EXIT_SIGNING
from ._exit import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from ._exit import EXIT_USAGE as EXIT_USAGE
from ._exit import exit_code_for
from ._output import PROG as PROG
from ._output import err, in_cli_words
from ._parser import build_parser
from ._session import Session as Session
from ._settings import ENV_CLIENT_ID as ENV_CLIENT_ID
from ._settings import ENV_CLIENT_SECRET as ENV_CLIENT_SECRET
from ._settings import ENV_ISSUER as ENV_ISSUER
from ._settings import ENV_SCOPE as ENV_SCOPE
from ._settings import ENV_SIGNER as ENV_SIGNER
from ._settings import ENV_TOKEN_ENDPOINT as ENV_TOKEN_ENDPOINT
from ._settings import METHODS as METHODS
from ._settings import Settings as Settings
from ._settings import settings_from

__all__ = ["build_parser", "exit_code_for", "main", "run", "settings_from"]
# Also importable from here, as before the split (``X as X`` re-exports them): the EXIT_*
# codes and their table, the ENV_* names, METHODS, Settings, Session and PROG.

Command = Callable[[argparse.Namespace, Session], Awaitable[int]]

# Each command's module is imported when that command runs (a cold start imports only its own).
COMMANDS: dict[str, str] = {
    "token": "_token",
    "proof": "_proof",
    "jwks": "_jwks",
    "certificate": "_certificate",
    "assertion": "_assertion",
    "doctor": "_doctor",
    "demo": "_demo",
}


def command(name: str) -> Command:
    """The function of the command ``name`` (``cmd_<name>`` in its module)."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name]}")
    found: Command = getattr(module, f"cmd_{name}")
    return found


def _leaf(error: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _configure_logging(debug: bool, verbose: bool) -> Callable[[], None]:
    """Send the library's logs to stderr when asked (``--verbose``, ``--debug``); else only
    its warnings that it went on despite something (``extra={"leniency": True}``: metadata
    that omits what the client uses, the audience fallback), so leniency is never silent
    and an error stays one line. Never through Python's last-resort handler. Returns an undo function."""
    logger = logging.getLogger("keyless_m2m")
    previous_level = logger.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(message)s"))
    if debug or verbose:
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
    else:
        handler.addFilter(lambda record: bool(getattr(record, "leniency", False)))
    logger.addHandler(handler)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

    return undo


async def run(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command in the current event loop (asyncio or trio); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    undo_logging = _configure_logging(debug, bool(getattr(args, "verbose", False)))
    session: Session | None = None
    try:
        settings = settings_from(args, os.environ if environ is None else environ)
        session = Session(settings)
        return await command(args.command)(args, session)
    except (Exception, KeyboardInterrupt) as caught:
        error = _leaf(caught)
        if debug:
            traceback.print_exception(caught, file=sys.stderr)
        if isinstance(error, BrokenPipeError):
            pass  # the reader left (`| head`): nothing to tell it, nor the terminal
        elif isinstance(error, KeylessM2MError):
            err(f"{PROG}: {type(error).__name__}: {in_cli_words(str(error))}")
        elif isinstance(error, KeyboardInterrupt):
            err(f"{PROG}: interrupted")
        else:
            hint = "" if debug else " (run with --debug for the traceback)"
            err(f"{PROG}: unexpected error: {type(error).__name__}: {error}{hint}")
        return exit_code_for(error)
    finally:
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.aclose()
        undo_logging()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``keyless-m2m`` console script: runs :func:`run` on asyncio. A closed stdout
    (``| head``) ends it quietly with 141, as a writer killed by SIGPIPE."""
    try:
        code = anyio.run(run, argv)
    except KeyboardInterrupt:
        err(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    if code == EXIT_BROKEN_PIPE:
        # What is left in stdout's buffer would fail again when the interpreter flushes it
        # at exit ("Exception ignored ... BrokenPipeError"): point stdout at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
