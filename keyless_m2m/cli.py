"""The ``keyless-m2m`` command (also ``python -m keyless_m2m``).

Subcommands::

    keyless-m2m demo                      the whole flow against an embedded loopback server
    keyless-m2m token [--json]            print an access token (or the whole token response)
    keyless-m2m jwks URI [URI ...]        print the public JWKS of signers, to register
    keyless-m2m assertion [--decode]      mint one client assertion
    keyless-m2m doctor                    check a configuration end to end, with fixes

Configuration comes from flags or environment variables (flags win):
``KEYLESS_M2M_TOKEN_ENDPOINT``, ``KEYLESS_M2M_ISSUER``, ``KEYLESS_M2M_CLIENT_ID``,
``KEYLESS_M2M_SIGNER`` (a signer URI), ``KEYLESS_M2M_CLIENT_SECRET``, ``KEYLESS_M2M_SCOPE``.
A client secret is read from the environment or a file, never from the command line,
where other users of the machine could read it.

Results go to stdout, messages to stderr. An error is one line on stderr naming the typed
error (``--debug`` adds the traceback and debug logs). Exit codes: 0 success; 1 any other
error; 2 usage or configuration (``ConfigurationError``); 3 the authorization server
refused (``TokenRequestError``); 4 the server or the network is unavailable
(``TransportError`` and retryable errors: 5xx, 429, ``temporarily_unavailable``); 5 the
signer failed (``SigningError``); 6 discovery or an invalid response (``DiscoveryError``,
``InvalidTokenResponseError``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, NoReturn
from urllib.parse import urlsplit

import anyio
import httpx

from ._jose import b64url_decode
from .client_auth import ClientAuth, ClientSecretBasic, ClientSecretPost, PrivateKeyJWT
from .discovery import (
    DiscoveredTokenEndpoint,
    ServerMetadata,
    _clock_skew,
    _get,
    check_client_auth,
    discover,
)
from .endpoint import TokenEndpoint, shown_url
from .errors import (
    ConfigurationError,
    DiscoveryError,
    InvalidClientError,
    InvalidScopeError,
    InvalidTargetError,
    InvalidTokenResponseError,
    KeylessM2MError,
    MissingExtraError,
    SigningError,
    TokenRequestError,
    TransportError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from .manager import TokenManager
from .signers import KeyDescription, Signer, known_schemes, signer_from_uri

__all__ = ["build_parser", "exit_code_for", "main", "run", "settings_from"]

PROG = "keyless-m2m"

ENV_TOKEN_ENDPOINT = "KEYLESS_M2M_TOKEN_ENDPOINT"  # noqa: S105 - a variable name
ENV_ISSUER = "KEYLESS_M2M_ISSUER"
ENV_CLIENT_ID = "KEYLESS_M2M_CLIENT_ID"
ENV_SIGNER = "KEYLESS_M2M_SIGNER"
ENV_CLIENT_SECRET = "KEYLESS_M2M_CLIENT_SECRET"  # noqa: S105 - a variable name
ENV_SCOPE = "KEYLESS_M2M_SCOPE"

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_UNAVAILABLE = 4
EXIT_SIGNING = 5
EXIT_DISCOVERY = 6
EXIT_INTERRUPTED = 130

METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post")

EXIT_CODES_HELP = """\
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


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error (see the module docstring)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if not isinstance(error, KeylessM2MError):
        return EXIT_OTHER
    if isinstance(error, ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, SigningError):
        return EXIT_SIGNING
    if isinstance(error, TransportError) or error.retryable:
        return EXIT_UNAVAILABLE
    if isinstance(error, TokenRequestError):
        return EXIT_REJECTED
    if isinstance(error, DiscoveryError | InvalidTokenResponseError):
        return EXIT_DISCOVERY
    return EXIT_OTHER


# -- configuration --------------------------------------------------------------------------


@dataclass
class Settings:
    """What a command was configured with, flags first, then environment variables."""

    token_endpoint: str | None = None
    issuer: str | None = None
    client_id: str | None = None
    signer_uri: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    client_secret_source: str | None = None
    auth_method: str | None = None
    scope: str | None = None
    resources: list[str] = field(default_factory=list)
    audience: str | None = None
    algorithm: str | None = None
    assertion_aud: str = "token_endpoint"
    allow_insecure_http: bool = False
    timeout: float = 10.0
    ca_bundle: str | None = None

    def method(self) -> str:
        """The client authentication method: the one asked for, else the one the
        credentials imply (a signer means ``private_key_jwt``)."""
        method = self.auth_method
        if method is None:
            if self.signer_uri:
                return "private_key_jwt"
            if self.client_secret:
                return "client_secret_basic"
            raise ConfigurationError(
                f"no client credentials: pass --signer URI or set {ENV_SIGNER} (private_key_jwt), "
                f"or set {ENV_CLIENT_SECRET} / pass --client-secret-file (client secret)"
            )
        if method == "private_key_jwt" and not self.signer_uri:
            raise ConfigurationError(f"private_key_jwt needs a signer: pass --signer URI or set {ENV_SIGNER}")
        if method != "private_key_jwt" and not self.client_secret:
            raise ConfigurationError(
                f"{method} needs a client secret: set {ENV_CLIENT_SECRET} or pass --client-secret-file"
            )
        return method

    def require_client_id(self) -> str:
        if not self.client_id:
            raise ConfigurationError(f"no client id: pass --client-id or set {ENV_CLIENT_ID}")
        return self.client_id

    def where(self) -> str:
        """The configured token endpoint or issuer, for messages."""
        if self.token_endpoint:
            return f"token endpoint {self.token_endpoint}"
        if self.issuer:
            return f"issuer {self.issuer}"
        return "no token endpoint or issuer"


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _read_secret_file(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the client secret file {path!r}: {exc.strerror}") from None
    secret = text.strip("\r\n")
    if not secret:
        raise ConfigurationError(f"the client secret file {path!r} is empty")
    return secret


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge parsed flags with environment variables (flags win; empty variables are unset)."""

    def pick(attribute: str, variable: str | None) -> str | None:
        value = getattr(args, attribute, None)
        if value is not None:
            return str(value)
        return _env(environ, variable) if variable else None

    secret_file = getattr(args, "client_secret_file", None)
    secret: str | None
    source: str | None
    if secret_file is not None:
        secret, source = _read_secret_file(secret_file), "--client-secret-file"
    else:
        secret = _env(environ, ENV_CLIENT_SECRET)
        source = ENV_CLIENT_SECRET if secret else None
    token_endpoint, issuer = pick("token_endpoint", ENV_TOKEN_ENDPOINT), pick("issuer", ENV_ISSUER)
    for what, url in (("the token endpoint", token_endpoint), ("the issuer", issuer)):
        # Refused here, before any command (doctor's report included) shows the URL.
        if url is not None and shown_url(url) != url:
            raise ConfigurationError(
                f"{what} must not carry credentials (user:password@): they would show in logs "
                "and errors; pass the client secret with --client-secret-file"
            )
    return Settings(
        token_endpoint=token_endpoint,
        issuer=issuer,
        client_id=pick("client_id", ENV_CLIENT_ID),
        signer_uri=pick("signer", ENV_SIGNER),
        client_secret=secret,
        client_secret_source=source,
        auth_method=pick("auth_method", None),
        scope=pick("scope", ENV_SCOPE),
        resources=list(getattr(args, "resource", None) or []),
        audience=pick("audience", None),
        algorithm=pick("algorithm", None),
        assertion_aud=getattr(args, "assertion_aud", None) or "token_endpoint",
        allow_insecure_http=bool(getattr(args, "allow_insecure_http", False)),
        timeout=float(getattr(args, "timeout", None) or 10.0),
        ca_bundle=pick("ca_bundle", None),
    )


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
    """The argument parser (subcommands ``token``, ``jwks``, ``assertion``, ``doctor``, ``demo``)."""
    from . import __version__

    formatter = argparse.RawDescriptionHelpFormatter

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
    group.add_argument(
        "--client-secret-file",
        metavar="PATH",
        help=f"read a client secret from PATH ('-': stdin) instead of ${ENV_CLIENT_SECRET}",
    )
    group.add_argument("--client-secret", action=_RefuseSecretOnCommandLine, help=argparse.SUPPRESS)
    group.add_argument(
        "--auth-method",
        choices=METHODS,
        help="client authentication (default: private_key_jwt with a signer, else client_secret_basic)",
    )
    group.add_argument("--scope", metavar="SCOPES", help=f"space-separated scopes to request [${ENV_SCOPE}]")
    group.add_argument(
        "--resource", metavar="URI", action="append", help="RFC 8707 resource indicator (repeatable)"
    )
    group.add_argument("--audience", metavar="VALUE", help="the token request's audience parameter")
    group.add_argument("--algorithm", metavar="ALG", help="JWS algorithm for the signer (e.g. PS256)")
    group.add_argument(
        "--assertion-aud",
        choices=("token_endpoint", "issuer"),
        help="the client assertion's aud: the token endpoint (default) or the issuer "
        "(draft-ietf-oauth-rfc7523bis; needs --issuer)",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow plain http:// to non-loopback hosts (never do this in production)",
    )
    group.add_argument("--timeout", type=_positive_float, metavar="SECONDS", help="HTTP timeout (10)")
    group.add_argument("--ca-bundle", metavar="PATH", help="trust the CA certificates in this PEM file")

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

    demo = commands.add_parser(
        "demo",
        parents=[output],
        allow_abbrev=False,
        formatter_class=formatter,
        help="run the whole flow against an embedded loopback authorization server",
        description="Start an authorization server on 127.0.0.1, register a throwaway EC P-256 key "
        "(or --signer URI), and show the flow: discovery, the client assertion, the token, "
        "single flight under concurrency, a forced refresh. No account or server needed.",
        epilog=EXIT_CODES_HELP,
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

    token = commands.add_parser(
        "token",
        parents=[client, output],
        allow_abbrev=False,
        formatter_class=formatter,
        help="print an access token",
        description="Get a token with the client-credentials grant and print it (it is what you asked "
        "for: mind where the output goes).",
        epilog=EXIT_CODES_HELP,
    )
    token.add_argument(
        "--json", action="store_true", help="print the whole token response as JSON, token included"
    )

    jwks = commands.add_parser(
        "jwks",
        parents=[output],
        allow_abbrev=False,
        formatter_class=formatter,
        help="print the public JWKS of signers, to register with the authorization server",
        description=f'Print {{"keys": [...]}} with the public JWK of each signer (default: ${ENV_SIGNER}). '
        f"Known URI schemes: {', '.join(known_schemes())}.",
        epilog=EXIT_CODES_HELP,
    )
    jwks.add_argument("uris", nargs="*", metavar="SIGNER_URI", help="signer URIs")
    jwks.add_argument("--algorithm", metavar="ALG", help="JWS algorithm for the signers (e.g. PS256)")

    assertion = commands.add_parser(
        "assertion",
        parents=[client, output],
        allow_abbrev=False,
        formatter_class=formatter,
        help="mint one client assertion (private_key_jwt)",
        description="Sign one client assertion and print it (compact JWS). Its aud is the token "
        "endpoint (from --token-endpoint or the issuer's metadata) unless --assertion-aud issuer.",
        epilog=EXIT_CODES_HELP,
    )
    assertion.add_argument(
        "--decode", action="store_true", help="print JSON with the assertion, its header and its claims"
    )

    commands.add_parser(
        "doctor",
        parents=[client, output],
        allow_abbrev=False,
        formatter_class=formatter,
        help="check a configuration end to end, with a fix for each failure",
        description="Check, step by step: the configuration, the signer, a sign + verify round trip "
        "(verified independently with jwcrypto), the server's metadata, method and algorithm "
        "support, clock skew against the server's Date header, and a real token request. The "
        "exit code is the one of the first failed check.",
        epilog=EXIT_CODES_HELP,
    )
    return parser


# -- shared plumbing ------------------------------------------------------------------------


def _out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Session:
    """Builds signers, client auth and managers from :class:`Settings`, and closes them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._signers: dict[str, Signer] = {}

    def signer(self, uri: str | None = None) -> Signer:
        uri = uri or self.settings.signer_uri
        if not uri:
            raise ConfigurationError(f"no signer: pass --signer URI or set {ENV_SIGNER}")
        if uri not in self._signers:
            options: dict[str, Any] = {}
            if self.settings.algorithm:
                options["algorithm"] = self.settings.algorithm
            self._signers[uri] = signer_from_uri(uri, **options)
        return self._signers[uri]

    def client_auth(self, *, issuer: str | None = None) -> ClientAuth:
        settings = self.settings
        client_id = settings.require_client_id()
        method = settings.method()
        if method == "private_key_jwt":
            aud_issuer = None
            if settings.assertion_aud == "issuer":
                aud_issuer = issuer or settings.issuer
                if not aud_issuer:
                    raise ConfigurationError(f"--assertion-aud issuer needs --issuer or {ENV_ISSUER}")
            return PrivateKeyJWT(client_id, self.signer(), issuer=aud_issuer)
        assert settings.client_secret is not None
        if method == "client_secret_post":
            return ClientSecretPost(client_id, settings.client_secret)
        return ClientSecretBasic(client_id, settings.client_secret)

    def verify(self) -> Any:
        if self.settings.ca_bundle is None:
            return True
        try:
            return ssl.create_default_context(cafile=self.settings.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the CA bundle {self.settings.ca_bundle!r}: {exc}"
            ) from None

    def endpoint_options(self) -> dict[str, Any]:
        return {
            "timeout": self.settings.timeout,
            "verify": self.verify(),
            "allow_insecure_http": self.settings.allow_insecure_http,
        }

    def http_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self.settings.timeout, verify=self.verify(), follow_redirects=False)

    def manager(self, auth: ClientAuth) -> TokenManager:
        settings = self.settings
        options: dict[str, Any] = {
            "scope": settings.scope,
            "resource": settings.resources or None,
            "audience": settings.audience,
            **self.endpoint_options(),
        }
        if settings.token_endpoint:
            return TokenManager(settings.token_endpoint, auth, **options)
        if settings.issuer:
            return TokenManager.from_issuer(settings.issuer, auth, **options)
        raise ConfigurationError(
            f"no authorization server: pass --token-endpoint URL or --issuer URL "
            f"(or set {ENV_TOKEN_ENDPOINT} / {ENV_ISSUER})"
        )

    async def aclose(self) -> None:
        signers, self._signers = list(self._signers.values()), {}
        for signer in signers:
            await signer.aclose()


def _decode_segment(segment: str) -> Any:
    return json.loads(b64url_decode(segment))


def decode_assertion(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS (not verified: for display)."""
    header, claims, _signature = assertion.split(".")
    return _decode_segment(header), _decode_segment(claims)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- token, jwks, assertion -----------------------------------------------------------------


async def cmd_token(args: argparse.Namespace, session: Session) -> int:
    auth = session.client_auth()
    async with session.manager(auth) as tokens:
        token = await tokens.get_token()
    if args.json:
        _out(json.dumps({"access_token": token.value, **token.raw}, indent=2))
    else:
        _out(token.value)
    return EXIT_OK


async def cmd_jwks(args: argparse.Namespace, session: Session) -> int:
    uris = list(args.uris) or ([session.settings.signer_uri] if session.settings.signer_uri else [])
    if not uris:
        raise ConfigurationError(f"name the signers: {PROG} jwks URI [URI ...] (or set {ENV_SIGNER})")
    keys: list[dict[str, Any]] = []
    for uri in uris:
        jwk = dict((await session.signer(uri).describe()).public_jwk)
        clash = next((k for k in keys if k["kid"] == jwk["kid"]), None)
        if clash == jwk:
            continue  # the same key named twice
        if clash is not None:
            raise ConfigurationError(f"two different keys share the kid {jwk['kid']!r}; give each its own")
        keys.append(jwk)
    _out(json.dumps({"keys": keys}, indent=2))
    return EXIT_OK


async def cmd_assertion(args: argparse.Namespace, session: Session) -> int:
    settings = session.settings
    auth = session.client_auth()
    if not isinstance(auth, PrivateKeyJWT):
        raise ConfigurationError(f"an assertion needs private_key_jwt: pass --signer URI or set {ENV_SIGNER}")
    if auth.issuer is not None or settings.token_endpoint:
        token_endpoint = settings.token_endpoint or auth.issuer or ""
    elif settings.issuer:
        async with session.http_client() as http:
            metadata = await discover(
                settings.issuer, http_client=http, allow_insecure_http=settings.allow_insecure_http
            )
        token_endpoint = metadata.token_endpoint
    else:
        raise ConfigurationError(
            f"the assertion's aud needs --token-endpoint or --issuer (or {ENV_TOKEN_ENDPOINT} / {ENV_ISSUER})"
        )
    assertion = await auth.assertion(token_endpoint)
    if args.decode:
        header, claims = decode_assertion(assertion)
        _out(json.dumps({"header": header, "claims": claims, "assertion": assertion}, indent=2))
    else:
        _out(assertion)
    return EXIT_OK


# -- doctor ---------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str  # PASS, WARN, FAIL or SKIP
    detail: str
    fix: str | None = None
    error: BaseException | None = None


class Doctor:
    """Runs the checks, printing each as it completes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.settings = session.settings
        self.checks: list[Check] = []
        self.method: str | None = None
        self.description: KeyDescription | None = None
        self.signer_ok = False
        self.metadata: ServerMetadata | None = None

    def report(
        self,
        name: str,
        status: str,
        detail: str,
        fix: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        check = Check(name, status, detail, fix, error)
        self.checks.append(check)
        _out(f"{status:<5} {name:<19} {detail}")
        if fix:
            _out(f"{'':<5} {'':<19} fix: {fix}")

    def failed(self, name: str, error: BaseException, fix: str) -> None:
        self.report(name, "FAIL", f"{type(error).__name__}: {error}", fix, error)

    async def run(self) -> int:
        self.configuration()
        await self.signer_checks()
        async with self.session.http_client() as http:
            await self.metadata_check(http)
            self.support_check()
            await self.clock_check(http)
        await self.token_check()
        failures = [c for c in self.checks if c.status == "FAIL"]
        warnings = [c for c in self.checks if c.status == "WARN"]
        if failures:
            _out(f"doctor: {len(failures)} of {len(self.checks)} checks failed")
            first = failures[0].error
            return exit_code_for(first) if first is not None else EXIT_OTHER
        extra = f" ({len(warnings)} with warnings)" if warnings else ""
        _out(f"doctor: all {len(self.checks)} checks passed{extra}")
        return EXIT_OK

    # the steps

    def configuration(self) -> None:
        settings = self.settings
        problems: list[str] = []
        if not settings.client_id:
            problems.append(f"no client id (--client-id / {ENV_CLIENT_ID})")
        try:
            self.method = settings.method()
        except ConfigurationError as exc:
            problems.append(str(exc))
        if settings.assertion_aud == "issuer" and not settings.issuer:
            problems.append(f"--assertion-aud issuer needs --issuer or {ENV_ISSUER}")
        if not settings.token_endpoint and not settings.issuer:
            problems.append(
                f"no token endpoint or issuer (--token-endpoint / {ENV_TOKEN_ENDPOINT}, "
                f"--issuer / {ENV_ISSUER})"
            )
        if problems:
            self.report(
                "configuration",
                "FAIL",
                "; ".join(problems),
                f"set the missing values with flags or environment variables ({PROG} doctor --help)",
                ConfigurationError("; ".join(problems)),
            )
            return
        credential = (
            f"signer {settings.signer_uri}"
            if self.method == "private_key_jwt"
            else f"client secret from {settings.client_secret_source}"
        )
        detail = f"client {settings.client_id!r}, {self.method} ({credential}), {settings.where()}"
        if self.method == "private_key_jwt" and settings.client_secret:
            self.report(
                "configuration",
                "WARN",
                detail + "; a client secret is also set and ignored",
                "unset it, or choose with --auth-method",
            )
        else:
            self.report("configuration", "PASS", detail)

    async def signer_checks(self) -> None:
        if self.method != "private_key_jwt" and not (self.method is None and self.settings.signer_uri):
            reason = "no signer configured" if self.method is None else f"{self.method} uses no signer"
            self.report("signer reachable", "SKIP", reason)
            self.report("sign + verify", "SKIP", reason)
            return
        uri = self.settings.signer_uri
        try:
            signer = self.session.signer()
            self.description = await signer.describe()
        except KeylessM2MError as exc:
            self.failed("signer reachable", exc, _signer_fix(exc, uri))
            self.report("sign + verify", "SKIP", "the signer is not reachable")
            return
        description = self.description
        self.report(
            "signer reachable", "PASS", f"{uri}: {description.algorithm} key, kid {description.key_id!r}"
        )
        try:
            auth = PrivateKeyJWT(self.settings.client_id or "doctor", signer)
            assertion = await auth.assertion(self.settings.token_endpoint or "https://doctor.invalid/token")
            _verify_independently(assertion, description)
        except KeylessM2MError as exc:
            self.failed("sign + verify", exc, _signer_fix(exc, uri))
            return
        self.signer_ok = True
        self.report(
            "sign + verify",
            "PASS",
            f"an assertion signed with {description.algorithm} verifies with the signer's public JWK "
            "(checked by jwcrypto)",
        )

    async def metadata_check(self, http: httpx.AsyncClient) -> None:
        settings = self.settings
        issuer, guessed = settings.issuer, False
        if not issuer:
            if not settings.token_endpoint:
                self.report("metadata reachable", "SKIP", "no issuer or token endpoint")
                return
            parts = urlsplit(settings.token_endpoint)
            issuer, guessed = f"{parts.scheme}://{parts.netloc}", True
        try:
            metadata = await discover(
                issuer, http_client=http, allow_insecure_http=settings.allow_insecure_http, max_age=0
            )
        except KeylessM2MError as exc:
            if guessed:
                self.report(
                    "metadata reachable",
                    "SKIP",
                    f"no metadata for {issuer} (the token endpoint's origin); pass --issuer to check "
                    "what the server supports",
                )
                return
            self.failed("metadata reachable", exc, _discovery_fix(exc, issuer))
            return
        if guessed and metadata.token_endpoint != settings.token_endpoint:
            self.report(
                "metadata reachable",
                "SKIP",
                f"the metadata at {metadata.url} is for another token endpoint; pass --issuer to check "
                "what the server supports",
            )
            return
        self.metadata = metadata
        detail = f"{metadata.url} (issuer {metadata.issuer})"
        if guessed:
            detail += ", found from the token endpoint's origin"
        if settings.token_endpoint and metadata.token_endpoint != settings.token_endpoint:
            self.report(
                "metadata reachable",
                "WARN",
                f"{detail}; it names the token endpoint {metadata.token_endpoint}, not the configured "
                f"{settings.token_endpoint}",
                "check --token-endpoint, or leave it out to use the discovered one",
            )
            return
        self.report("metadata reachable", "PASS", detail)

    def support_check(self) -> None:
        name = "method and alg"
        metadata = self.metadata
        if metadata is None or self.method is None:
            self.report(name, "SKIP", "no metadata" if metadata is None else "no client authentication")
            return
        try:
            notes = check_client_auth(metadata, self.method)
        except DiscoveryError as exc:
            fix = (
                "register the client for one of the methods the server supports and choose it with "
                "--auth-method, or enable this method on the server"
            )
            if "client_credentials" in str(exc):
                fix = "enable the client_credentials grant on the authorization server"
            self.failed(name, exc, fix)
            return
        algorithm = self.description.algorithm if self.description is not None else None
        if self.method == "private_key_jwt" and algorithm is None:
            self.report(name, "WARN", f"the server supports {self.method}; the signer's alg is unknown")
            return
        try:
            notes = check_client_auth(metadata, self.method, algorithm)
        except DiscoveryError as exc:
            self.failed(
                name,
                exc,
                "use a key and algorithm the server accepts (listed above): --algorithm for another "
                "alg of the same key (e.g. PS256 for RSA), or another key",
            )
            return
        detail = f"the server supports {self.method}" + (f" with {algorithm}" if algorithm else "")
        if notes:
            self.report(name, "WARN", f"{detail}; {'; '.join(notes)} (not checked)")
        else:
            self.report(name, "PASS", detail)

    async def clock_check(self, http: httpx.AsyncClient) -> None:
        name = "clock skew"
        skew = self.metadata.clock_skew if self.metadata is not None else None
        target = self.settings.token_endpoint or (self.metadata.token_endpoint if self.metadata else None)
        if skew is None and target:
            try:
                _status, _body, date_header, local = await _get(http, target)
                skew = _clock_skew(date_header, local)
            except KeylessM2MError:
                skew = None
        if skew is None:
            self.report(name, "SKIP", "the server sent no usable Date header")
            return
        lifetime = 60
        detail = f"{round(skew):+d} s against the server's Date header (1 s resolution)"
        fix = (
            "synchronise this machine's clock (NTP; e.g. timedatectl set-ntp true), or the "
            f"server's: client assertions are valid for {lifetime} s from their iat"
        )
        if abs(skew) >= lifetime / 2:
            self.report(name, "FAIL", detail, fix)
        elif abs(skew) >= 10:
            self.report(name, "WARN", detail, fix)
        else:
            self.report(name, "PASS", detail)

    async def token_check(self) -> None:
        name = "token obtained"
        settings = self.settings
        if self.method is None or not settings.client_id:
            self.report(name, "SKIP", "the configuration is incomplete")
            return
        if self.method == "private_key_jwt" and not self.signer_ok:
            self.report(name, "SKIP", "the signer failed above")
            return
        url = settings.token_endpoint or (self.metadata.token_endpoint if self.metadata is not None else None)
        if not url:
            self.report(name, "SKIP", "no token endpoint (the issuer's metadata was not found)")
            return
        issuer = self.metadata.issuer if self.metadata is not None else settings.issuer
        try:
            auth = self.session.client_auth(issuer=issuer)
            endpoint = TokenEndpoint(url, auth, max_attempts=1, **self.session.endpoint_options())
        except KeylessM2MError as exc:
            self.failed(name, exc, "fix the configuration above")
            return
        try:
            token = await endpoint.request(
                scope=settings.scope, resource=settings.resources, audience=settings.audience
            )
        except KeylessM2MError as exc:
            self.failed(name, exc, self.token_fix(exc, url, auth))
            return
        finally:
            await endpoint.aclose()
        self.report(
            name,
            "PASS",
            f"{token.token_type} token from {url}, expires in {token.expires_in:.0f} s, "
            f"scope {token.scope or '(none)'} (the token is not shown)",
        )

    def token_fix(self, error: KeylessM2MError, url: str, auth: ClientAuth) -> str:
        client_id = self.settings.client_id
        if isinstance(error, InvalidClientError):
            if isinstance(auth, PrivateKeyJWT) and self.description is not None:
                aud = auth.audience or auth.issuer or url
                return (
                    f"the server does not accept this client's assertion: check that client {client_id!r} "
                    f"exists, uses private_key_jwt, is registered for {self.description.algorithm}, and "
                    f"that its registered JWKS holds this key (kid {self.description.key_id!r}: print it "
                    f"with `{PROG} jwks {self.settings.signer_uri}`); also that it accepts aud={aud!r} "
                    "(or try --assertion-aud issuer)"
                )
            return (
                f"check the client id {client_id!r} and its secret, and that the client is registered "
                f"for {auth.method}"
            )
        if isinstance(error, UnauthorizedClientError):
            return f"allow the client_credentials grant for client {client_id!r} on the authorization server"
        if isinstance(error, InvalidScopeError):
            return f"request only scopes client {client_id!r} may have (asked for {self.settings.scope!r})"
        if isinstance(error, InvalidTargetError):
            return "request a resource/audience the server knows and the client may use"
        if isinstance(error, UnsupportedGrantTypeError):
            return "enable the client_credentials grant on the authorization server"
        if isinstance(error, TransportError):
            return (
                f"check that {url} is right and reachable from here (DNS, proxy, firewall, TLS: --ca-bundle)"
            )
        if isinstance(error, InvalidTokenResponseError):
            return f"{url} does not answer like a token endpoint: check the URL, or use --issuer"
        if isinstance(error, SigningError):
            return _signer_fix(error, self.settings.signer_uri)
        if error.retryable:
            return "the server has trouble: try again later, or ask its operators"
        return "read the error above; the server's error_description usually names the problem"


async def cmd_doctor(args: argparse.Namespace, session: Session) -> int:
    return await Doctor(session).run()


def _verify_independently(assertion: str, description: KeyDescription) -> None:
    """Verify with jwcrypto, not with our signer code, and check the header names the key."""
    from jwcrypto import jwk, jws
    from jwcrypto.common import JWException

    try:
        key = jwk.JWK(**dict(description.public_jwk))
        token = jws.JWS()
        token.deserialize(assertion)
        token.verify(key, alg=description.algorithm)
    except (JWException, ValueError, TypeError) as exc:
        raise SigningError(
            f"the signature does not verify with the signer's own public key ({type(exc).__name__})"
        ) from None
    header = token.jose_header
    if header.get("alg") != description.algorithm or header.get("kid") != description.key_id:
        raise SigningError("the assertion header does not name the signer's alg and kid")


def _signer_fix(error: KeylessM2MError, uri: str | None) -> str:
    if isinstance(error, MissingExtraError):
        return f"install the extra: pip install 'keyless-m2m[{error.extra}]'"
    if isinstance(error, ConfigurationError):
        return (
            f"check the signer URI {uri!r} (schemes: {', '.join(known_schemes())}) and --algorithm "
            "against the key's type"
        )
    if isinstance(error, SigningError) and "does not verify" in str(error):
        return (
            "the signer signs with another key or algorithm than the one it describes: check "
            "--algorithm and any pinned key version"
        )
    code = f" (provider code {error.code})" if isinstance(error, SigningError) and error.code else ""
    return (
        f"check that these credentials may read the public key and sign with it{code}: e.g. "
        "kms:GetPublicKey + kms:Sign on AWS, the transit sign policy on Vault (docs/backends/)"
    )


def _discovery_fix(error: KeylessM2MError, issuer: str) -> str:
    if "mismatch" in str(error):
        return "configure the issuer exactly as the server publishes it, if it is the server you mean"
    if isinstance(error, TransportError):
        return f"check that {issuer} is right and reachable from here (DNS, proxy, firewall, TLS)"
    return (
        "check the issuer URL (no /.well-known suffix), or use --token-endpoint if the server "
        "publishes no metadata"
    )


# -- demo -----------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


async def cmd_demo(args: argparse.Namespace, session: Session) -> int:
    from cryptography.hazmat.primitives.asymmetric import ec

    from .signers.local import LocalSigner
    from .testing.authorization_server import AuthorizationServer

    concurrency: int = args.concurrency
    client_id, scope = "demo-client", "demo.read"

    def step(number: int, title: str, text: str) -> None:
        _out(f"{number}. {title:<22} {text}")

    def more(text: str) -> None:
        _out(f"   {'':<22} {text}")

    _out(f"{PROG} demo: private_key_jwt client credentials, end to end, on loopback\n")
    server = AuthorizationServer(expires_in=3600).start()
    try:
        step(1, "authorization server", f"{server.issuer} (embedded, this process, 127.0.0.1 only)")

        if args.signer:
            signer = session.signer(args.signer)
            origin = f"from {args.signer}"
        else:
            signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()), name="throwaway demo key")
            origin = "throwaway EC P-256 key, generated now, in memory only"
        description = await signer.describe()
        step(2, "signing key", origin)
        more(f"alg {description.algorithm}, kid {description.key_id}")

        server.register_client(client_id, public_jwk=dict(description.public_jwk), scopes=[scope])
        step(3, "client registered", f"{client_id!r} with this public JWK (what `{PROG} jwks` prints):")
        more(_compact(dict(description.public_jwk)))

        auth = PrivateKeyJWT(client_id, signer)
        async with TokenManager.from_issuer(server.issuer, auth, scope=scope) as tokens:
            endpoint = tokens.endpoint
            assert isinstance(endpoint, DiscoveredTokenEndpoint)
            metadata = await endpoint.discover()
            step(4, "discovery", f"{metadata.url}")
            more(
                f"token endpoint {metadata.token_endpoint}; the server accepts private_key_jwt "
                f"with {description.algorithm}"
            )

            assertion = await auth.assertion(metadata.token_endpoint)
            header, claims = decode_assertion(assertion)
            step(5, "client assertion", "a fresh one is signed for every token request; decoded:")
            more(f"header {_compact(header)}")
            more(f"claims {_compact(claims)}")

            results: list[Any] = [None] * concurrency

            async def call(index: int) -> None:
                results[index] = await tokens.get_token()

            started = perf_counter()
            async with anyio.create_task_group() as group:
                for index in range(concurrency):
                    group.start_soon(call, index)
            elapsed = perf_counter() - started
            token = results[0]
            same = all(result is token for result in results)
            requests_after_burst = server.token_requests
            step(
                6,
                "token",
                f"{_plural(concurrency, 'concurrent get_token() call')} -> "
                f"{_plural(requests_after_burst, 'token request')}, "
                f"{_plural(tokens.stats.signatures, 'signature')} ({elapsed:.2f} s)",
            )
            more(
                f"{'every caller got the same token' if same else 'callers got different tokens'}: "
                f"Bearer {token.value[:8]}... expires in {token.expires_in:.0f} s, scope {token.scope}"
            )

            started = perf_counter()
            for _ in range(100_000):
                await tokens.get_token()
            cached = perf_counter() - started
            step(
                7,
                "cache",
                f"100,000 more get_token() calls served from the cache in {cached:.2f} s, "
                f"{_plural(server.token_requests - requests_after_burst, 'more token request')}",
            )

            await tokens.invalidate(token)
            fresh = await tokens.get_token()
            step(
                8,
                "forced refresh",
                f"invalidate(token) then get_token() -> "
                f"{'a new token' if fresh != token else 'the same token'}, "
                f"{_plural(server.token_requests, 'token request')} in total",
            )
            ok = same and requests_after_burst == 1 and server.token_requests == 2 and fresh != token
    finally:
        await anyio.to_thread.run_sync(server.stop)
    step(9, "stopped", "the server is stopped; nothing was left running")
    _out(
        f"\nnext: `{PROG} jwks URI` prints your key's JWKS to register, "
        f"`{PROG} doctor` checks your configuration"
    )
    if not ok:
        _err(f"{PROG}: the demo did not see exactly one token request per flight (see above)")
        return EXIT_OTHER
    return EXIT_OK


# -- entry points ---------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Session], Awaitable[int]]

COMMANDS: dict[str, Command] = {
    "token": cmd_token,
    "jwks": cmd_jwks,
    "assertion": cmd_assertion,
    "doctor": cmd_doctor,
    "demo": cmd_demo,
}


def _leaf(error: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _configure_logging(debug: bool, verbose: bool) -> Callable[[], None]:
    """Send the library's logs to stderr when asked, else nowhere (not even Python's
    last-resort handler, so an error stays one line). Returns an undo function."""
    logger = logging.getLogger("keyless_m2m")
    previous_level = logger.level
    handler: logging.Handler
    if debug or verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s %(message)s"))
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
    else:
        handler = logging.NullHandler()
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
        return await COMMANDS[args.command](args, session)
    except (Exception, KeyboardInterrupt) as caught:
        error = _leaf(caught)
        if debug:
            traceback.print_exception(caught, file=sys.stderr)
        if isinstance(error, KeylessM2MError):
            _err(f"{PROG}: {type(error).__name__}: {error}")
        elif isinstance(error, KeyboardInterrupt):
            _err(f"{PROG}: interrupted")
        else:
            hint = "" if debug else " (run with --debug for the traceback)"
            _err(f"{PROG}: unexpected error: {type(error).__name__}: {error}{hint}")
        return exit_code_for(error)
    finally:
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.aclose()
        undo_logging()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``keyless-m2m`` console script: runs :func:`run` on asyncio."""
    try:
        return anyio.run(run, argv)
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
