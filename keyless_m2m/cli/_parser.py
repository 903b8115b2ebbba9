"""The argument parser of ``keyless-m2m``: the shared option groups, one subparser per
command, and the refusals that keep a secret off the command line and out of usage errors."""

from __future__ import annotations

import argparse
import textwrap
from functools import partial
from typing import Any, NoReturn

from .._certificate_limits import DEFAULT_SUBJECT, MAX_DAYS
from ..signers import known_schemes
from ._exit import EXIT_CODES_HELP
from ._output import PROG
from ._settings import (
    ENV_CLIENT_CERT,
    ENV_CLIENT_ID,
    ENV_CLIENT_KEY,
    ENV_CLIENT_KEY_PASSWORD,
    ENV_CLIENT_SECRET,
    ENV_DPOP_KEY,
    ENV_ISSUER,
    ENV_SCOPE,
    ENV_SIGNER,
    ENV_TOKEN_ENDPOINT,
    METHODS,
)

__all__ = ["build_parser"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal, one paragraph per line as written; indented
    lines (the ``exit codes:`` table) kept as they are, so their layout survives."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        for line in text.splitlines():
            if not line.strip() or line[0].isspace():
                lines.append(indent + line if line.strip() else "")
            else:
                lines += textwrap.wrap(line, width, initial_indent=indent, subsequent_indent=indent)
        return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse, except that unrecognized arguments are named without their values: a
    mistyped option may be followed by a secret."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            names = [arg.split("=", 1)[0] for arg in message[len(prefix) :].split() if arg.startswith("-")]
            message = prefix + (" ".join(names) or "(values not shown)")
        super().error(message)


class _RefuseSecretOnCommandLine(argparse.Action):
    """``--client-secret VALUE`` is refused without echoing VALUE (argparse would print it
    back as an unrecognized argument)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"a client secret is not taken on the command line (other users can read it there): "
            f"set {ENV_CLIENT_SECRET} or pass --client-secret-file PATH"
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``token``, ``jwks``, ``certificate``, ``assertion``,
    ``doctor``, ``demo``)."""
    from .. import __version__

    formatter = _HelpFormatter

    output = _Parser(add_help=False, allow_abbrev=False)
    logs = output.add_argument_group("output")
    # SUPPRESS: given before or after the subcommand, the flag is kept (a subparser's
    # default would otherwise overwrite the main parser's value).
    logs.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show debug logs, and a traceback on error",
    )
    logs.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show informational logs (retries, refreshes)",
    )

    # The commands that only read signers (jwks, certificate) name them as arguments or
    # with --signer (as token does), and share this option.
    key = _Parser(add_help=False, allow_abbrev=False)
    key.add_argument("--algorithm", metavar="ALG", help="JWS algorithm for the signers (e.g. PS256)")

    # The client options in three parents, so that each command lists what it uses:
    # ``client`` (every command that talks to or signs for a server), ``credentials`` and
    # ``request`` (the commands that make a token request: token, doctor).
    client = _Parser(add_help=False, allow_abbrev=False)
    group = client.add_argument_group(
        "authorization server and client (flags win over environment variables)"
    )
    group.add_argument(
        "--token-endpoint", metavar="URL", help=f"the token endpoint URL [${ENV_TOKEN_ENDPOINT}]"
    )
    group.add_argument(
        "--issuer",
        metavar="URL",
        help=f"the issuer; its metadata gives the token endpoint and what it supports [${ENV_ISSUER}]",
    )
    group.add_argument("--client-id", metavar="ID", help=f"the client id [${ENV_CLIENT_ID}]")
    group.add_argument(
        "--signer",
        metavar="URI",
        help=f"the signing key, e.g. file:///key.pem or awskms:///alias/name [${ENV_SIGNER}]",
    )
    group.add_argument("--client-secret", action=_RefuseSecretOnCommandLine, help=argparse.SUPPRESS)
    group.add_argument("--algorithm", metavar="ALG", help="JWS algorithm for the signer (e.g. PS256)")
    group.add_argument(
        "--assertion-aud",
        choices=("auto", "issuer", "token_endpoint"),
        help="the client assertion's aud: auto (default: the issuer when --issuer is given, "
        "then the token endpoint if the server refuses it), issuer (draft-ietf-oauth-rfc7523bis "
        "only; needs --issuer) or token_endpoint",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http:// to non-loopback hosts (never do this in production)",
    )
    group.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="HTTP timeout (10)")
    group.add_argument("--ca-bundle", metavar="PATH", help="trust the CA certificates in this PEM file")

    credentials = _Parser(add_help=False, allow_abbrev=False)
    group = credentials.add_argument_group("client credentials other than a signer")
    group.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help=f"read a client secret from PATH ('-': stdin) instead of ${ENV_CLIENT_SECRET}",
    )
    group.add_argument(
        "--auth-method",
        choices=METHODS,
        metavar="METHOD",  # the choices in the help, wrapped, not in one long usage line
        help=f"client authentication: {', '.join(METHODS)} (default: private_key_jwt with a "
        "signer, else client_secret_basic)",
    )
    group.add_argument(
        "--client-cert",
        metavar="FILE",
        help="TLS client certificate (PEM) for mutual TLS (RFC 8705): tls_client_auth, or "
        f"certificate-bound tokens with another method [${ENV_CLIENT_CERT}]",
    )
    group.add_argument(
        "--client-key",
        metavar="FILE",
        help=f"the TLS client certificate's private key (PEM) [${ENV_CLIENT_KEY}]",
    )
    group.add_argument(
        "--client-key-password-file",
        metavar="PATH",
        help=f"read the client key's password from PATH ('-': stdin) instead of ${ENV_CLIENT_KEY_PASSWORD}",
    )

    request = _Parser(add_help=False, allow_abbrev=False)
    group = request.add_argument_group("the token request")
    group.add_argument(
        "--dpop",
        action="store_true",
        help="DPoP (RFC 9449) with an ephemeral key; it ends with the command, so the token is "
        "for checking the server: bind it to a key you keep with --dpop-key",
    )
    group.add_argument(
        "--dpop-key",
        metavar="URI",
        help=f"DPoP (RFC 9449) with this signer URI's key as the proof key (implies --dpop) "
        f"[${ENV_DPOP_KEY}]",
    )
    group.add_argument("--scope", metavar="SCOPES", help=f"space-separated scopes to request [${ENV_SCOPE}]")
    group.add_argument(
        "--resource", metavar="URI", action="append", help="RFC 8707 resource indicator (repeatable)"
    )
    group.add_argument("--audience", metavar="VALUE", help="the token request's audience parameter")

    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="OAuth 2.0 client-credentials tokens with private_key_jwt signed in your KMS/HSM.\n"
        f"Start with `{PROG} demo`.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
        parents=[output],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Every command: no abbreviated options, the descriptions as written, the exit codes.
    add_command = partial(
        commands.add_parser, allow_abbrev=False, formatter_class=formatter, epilog=EXIT_CODES_HELP
    )

    demo = add_command(
        "demo",
        parents=[output],
        help="run the whole flow against an embedded loopback authorization server",
        description="Start an authorization server on 127.0.0.1, register a throwaway EC P-256 key "
        "(or --signer URI), and show the flow: discovery, the client assertion, the token, "
        "single flight under concurrency, a forced refresh. No account or server needed.",
    )
    demo.add_argument("--signer", metavar="URI", help="use this key instead of a throwaway one")
    demo.add_argument("--algorithm", metavar="ALG", help="JWS algorithm for --signer (e.g. PS256)")
    demo.add_argument(
        "--concurrency",
        type=_concurrency,
        default=10_000,
        metavar="N",
        help="concurrent get_token() calls (10000)",
    )

    token = add_command(
        "token",
        parents=[client, credentials, request, output],
        help="print an access token",
        description="Get a token with the client-credentials grant and print it (it is what you asked "
        "for: mind where the output goes).",
    )
    token.add_argument(
        "--json", action="store_true", help="print the whole token response as JSON, token included"
    )

    proof = add_command(
        "proof",
        parents=[output],
        help="print a DPoP proof for one request (RFC 9449), to send with a DPoP-bound token",
        description="Sign one DPoP proof JWT with the --dpop-key signer (the key the token is bound "
        "to) for METHOD URL, and print it: the DPoP header of that request. With "
        "--access-token-file, the proof carries the token's hash (ath), as a resource server "
        "needs; without it, the proof is for a token request.",
    )
    proof.add_argument("method", metavar="METHOD", help="the request's HTTP method (GET, POST, ...)")
    proof.add_argument("url", metavar="URL", help="the request's URL (query and fragment are not signed)")
    proof.add_argument("--dpop-key", metavar="URI", help=f"the proof key's signer URI [${ENV_DPOP_KEY}]")
    proof.add_argument(
        "--access-token-file",
        metavar="PATH",
        help="read the access token the request sends from PATH ('-': stdin); never a flag value",
    )
    proof.add_argument("--nonce", metavar="VALUE", help="the server's DPoP-Nonce to include")

    jwks = add_command(
        "jwks",
        parents=[key, output],
        help="print the public JWKS of signers, to register with the authorization server",
        description=f'Print {{"keys": [...]}} with the public JWK of each signer (default: ${ENV_SIGNER}). '
        f"Known URI schemes: {', '.join(known_schemes())}.",
    )
    jwks.add_argument("uris", nargs="*", metavar="SIGNER_URI", help="signer URIs")
    jwks.add_argument(
        "--signer",
        dest="signers",
        action="append",
        metavar="URI",
        help="a signer URI, as token takes it (repeatable; listed before the SIGNER_URIs)",
    )

    certificate = add_command(
        "certificate",
        parents=[key, output],
        help="print a self-signed X.509 certificate for a signer's key, signed inside the KMS/HSM",
        description="Make a self-signed X.509 v3 certificate for the signer's public key (default: "
        f"${ENV_SIGNER}), signed by the signer itself: the private key never leaves the KMS/HSM. "
        "Upload it where a server registers certificates, not JWKs (Microsoft Entra ID).",
    )
    certificate.add_argument("uri", nargs="?", metavar="SIGNER_URI", help="the signer URI")
    certificate.add_argument(
        "--signer", metavar="URI", help=f"the signer URI, as token takes it (or SIGNER_URI) [${ENV_SIGNER}]"
    )
    certificate.add_argument(
        "--subject",
        default=DEFAULT_SUBJECT,
        metavar="NAME",
        help=f"subject and issuer, an RFC 4514 name such as 'CN=my-client,O=Example' ({DEFAULT_SUBJECT})",
    )
    certificate.add_argument(
        "--days", type=int, default=365, metavar="N", help=f"days of validity, 1 to {MAX_DAYS} (365)"
    )
    certificate.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    certificate.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"pem", "x5t#S256", "x5t", "not_after", "subject"}',
    )

    assertion = add_command(
        "assertion",
        parents=[client, output],
        help="mint one client assertion (private_key_jwt)",
        description="Sign one client assertion and print it (compact JWS). Its aud is the one a token "
        "request sends first: the issuer when --issuer is given (rfc7523bis), else the token "
        "endpoint; --assertion-aud token_endpoint takes the token endpoint from --token-endpoint "
        "or the issuer's metadata.",
    )
    assertion.add_argument(
        "--decode", action="store_true", help="print JSON with the assertion, its header and its claims"
    )

    add_command(
        "doctor",
        parents=[client, credentials, request, output],
        help="check a configuration end to end, with a fix for each failure",
        description="Check, step by step: the configuration, the signer, a sign + verify round trip "
        "(verified independently with jwcrypto), the server's metadata, method and algorithm "
        "support, clock skew against the server's Date header, and a real token request. The "
        "exit code is the one of the first failed check.",
    )
    return parser
