"""What a ``keyless-m2m`` command is configured with: flags first, then the
``KEYLESS_M2M_*`` environment variables; a client secret from the environment or a file,
never from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..endpoint import shown_url
from ..errors import ConfigurationError

__all__ = [
    "ENV_CLIENT_CERT",
    "ENV_CLIENT_ID",
    "ENV_CLIENT_KEY",
    "ENV_CLIENT_KEY_PASSWORD",
    "ENV_CLIENT_SECRET",
    "ENV_DPOP_KEY",
    "ENV_ISSUER",
    "ENV_SCOPE",
    "ENV_SIGNER",
    "ENV_TOKEN_ENDPOINT",
    "METHODS",
    "TLS_METHODS",
    "Settings",
    "read_secret_file",
    "settings_from",
]

ENV_TOKEN_ENDPOINT = "KEYLESS_M2M_TOKEN_ENDPOINT"  # noqa: S105 - a variable name
ENV_ISSUER = "KEYLESS_M2M_ISSUER"
ENV_CLIENT_ID = "KEYLESS_M2M_CLIENT_ID"
ENV_SIGNER = "KEYLESS_M2M_SIGNER"
ENV_CLIENT_SECRET = "KEYLESS_M2M_CLIENT_SECRET"  # noqa: S105 - a variable name
ENV_SCOPE = "KEYLESS_M2M_SCOPE"
ENV_CLIENT_CERT = "KEYLESS_M2M_CLIENT_CERT"
ENV_CLIENT_KEY = "KEYLESS_M2M_CLIENT_KEY"
ENV_CLIENT_KEY_PASSWORD = "KEYLESS_M2M_CLIENT_KEY_PASSWORD"  # noqa: S105 - a variable name
ENV_DPOP_KEY = "KEYLESS_M2M_DPOP_KEY"

METHODS = (
    "private_key_jwt",
    "client_secret_basic",
    "client_secret_post",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
TLS_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")


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
    assertion_aud: str = "auto"
    allow_insecure_http: bool = False
    timeout: float = 10.0
    ca_bundle: str | None = None
    client_cert: str | None = None  # RFC 8705: a PEM certificate (and chain) file
    client_key: str | None = None
    client_key_password: str | None = field(default=None, repr=False)
    dpop: bool = False  # RFC 9449 with an ephemeral key (it ends with the command)
    dpop_key: str | None = None  # RFC 9449 with this signer URI's key

    def method(self) -> str:
        """The client authentication method: the one asked for, else the one the
        credentials imply (a signer means ``private_key_jwt``)."""
        method = self.auth_method
        if method is None:
            if self.signer_uri:
                return "private_key_jwt"
            if self.client_secret:
                return "client_secret_basic"
            if self.client_cert:
                return "tls_client_auth"
            raise ConfigurationError(
                f"no client credentials: pass --signer URI or set {ENV_SIGNER} (private_key_jwt), "
                f"or set {ENV_CLIENT_SECRET} / pass --client-secret-file (client secret), "
                f"or pass --client-cert FILE --client-key FILE (tls_client_auth)"
            )
        if method in TLS_METHODS:
            if not self.client_cert:
                raise ConfigurationError(
                    f"{method} needs a client certificate: pass --client-cert FILE and --client-key FILE "
                    f"(or set {ENV_CLIENT_CERT} / {ENV_CLIENT_KEY})"
                )
            return method
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


def read_secret_file(path: str, what: str) -> str:
    """The first line of the file at ``path`` (``-``: stdin) without its line end, for a
    secret that is never a flag value (it would show in ``ps``); ``what`` names it in errors."""
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} file {path!r}: {exc.strerror}") from None
    return text.strip("\r\n")


def _read_secret_file(path: str) -> str:
    secret = read_secret_file(path, "client secret")
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
        assertion_aud=getattr(args, "assertion_aud", None) or "auto",
        allow_insecure_http=bool(getattr(args, "allow_insecure_http", False)),
        timeout=float(getattr(args, "timeout", None) or 10.0),
        ca_bundle=pick("ca_bundle", None),
        client_cert=pick("client_cert", ENV_CLIENT_CERT),
        client_key=pick("client_key", ENV_CLIENT_KEY),
        client_key_password=_key_password(args, environ),
        dpop=bool(getattr(args, "dpop", False)),
        dpop_key=pick("dpop_key", ENV_DPOP_KEY),
    )


def _key_password(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """The client key's password: ``--client-key-password-file`` (``-``: stdin), else
    ``KEYLESS_M2M_CLIENT_KEY_PASSWORD`` (never a flag's value: it would show in ``ps``)."""
    path = getattr(args, "client_key_password_file", None)
    if path is None:
        return _env(environ, ENV_CLIENT_KEY_PASSWORD)
    return read_secret_file(path, "key password") or None
