"""``keyless-m2m doctor``: check a configuration end to end, one step at a time (the
configuration, the signer, a sign + verify round trip checked by jwcrypto, the server's
metadata, method and algorithm support, clock skew, a real token request), and print a fix
for each failure.

A fix is chosen from the error's type and its machine-readable attributes
(:attr:`DiscoveryError.reason <keyless_m2m.DiscoveryError>`, which check failed), never
from its message: messages are for people and may change.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..client_auth import ClientAuth, PrivateKeyJWT
from ..discovery import (
    ServerMetadata,
    check_client_auth,
    client_auth_mismatches,
    discover,
    server_clock_skew,
)
from ..endpoint import TokenEndpoint
from ..errors import (
    ConfigurationError,
    DiscoveryError,
    InvalidClientError,
    InvalidScopeError,
    InvalidTargetError,
    InvalidTokenResponseError,
    KeylessM2MError,
    MissingExtraError,
    RefusedWithoutReasonError,
    SigningError,
    TransportError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from ..signers import KeyDescription, known_schemes
from ._exit import EXIT_OK, EXIT_OTHER, exit_code_for
from ._output import PROG, in_cli_words, out
from ._session import Session
from ._settings import ENV_CLIENT_ID, ENV_ISSUER, ENV_TOKEN_ENDPOINT

__all__ = ["Check", "Doctor", "cmd_doctor"]

SIGNATURE_MISMATCH_FIX = (
    "the signer signs with another key or algorithm than the one it describes: check "
    "--algorithm and any pinned key version"
)


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
        out(f"{status:<5} {name:<19} {detail}")
        if fix:
            out(f"{'':<5} {'':<19} fix: {fix}")

    def failed(self, name: str, error: BaseException, fix: str) -> None:
        self.report(name, "FAIL", f"{type(error).__name__}: {in_cli_words(str(error))}", fix, error)

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
            out(f"doctor: {len(failures)} of {len(self.checks)} checks failed")
            first = failures[0].error
            return exit_code_for(first) if first is not None else EXIT_OTHER
        extra = f" ({len(warnings)} with warnings)" if warnings else ""
        out(f"doctor: all {len(self.checks)} checks passed{extra}")
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
            problems.append(in_cli_words(str(exc)))
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
        except KeylessM2MError as exc:
            self.failed("sign + verify", exc, _signer_fix(exc, uri))
            return
        failure = _verify_independently(assertion, description)
        if failure is not None:
            which, error = failure
            fix = SIGNATURE_MISMATCH_FIX if which == "signature" else _signer_fix(error, uri)
            self.failed("sign + verify", error, fix)
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
        algorithm = self.description.algorithm if self.description is not None else None
        mismatches = client_auth_mismatches(metadata, self.method, algorithm)
        if mismatches:
            # Not a failure: deployed servers leave out what they support; the token
            # request below decides (TokenManager.from_issuer warns likewise).
            self.report(
                name,
                "WARN",
                "; ".join(str(m) for m in mismatches) + " (the token request decides; "
                "strict_metadata=True refuses such a server)",
                "; or ".join(dict.fromkeys(_support_fix(m) for m in mismatches)),
                mismatches[0],
            )
            return
        if self.method == "private_key_jwt" and algorithm is None:
            self.report(name, "WARN", f"the server supports {self.method}; the signer's alg is unknown")
            return
        notes = check_client_auth(metadata, self.method, algorithm)  # nothing left to raise
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
                skew = await server_clock_skew(http, target)
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
                return (
                    f"the server does not accept this client's assertion: check that client {client_id!r} "
                    f"exists, uses private_key_jwt, is registered for {self.description.algorithm}, and "
                    f"that its registered JWKS holds this key (kid {self.description.key_id!r}: print it "
                    f"with `{PROG} jwks {self.settings.signer_uri}`); the hint above says which aud was "
                    "sent and what to set (--assertion-aud)"
                )
            return (
                f"check the client id {client_id!r} and its secret, and that the client is registered "
                f"for {auth.method}"
            )
        if isinstance(error, RefusedWithoutReasonError):
            return (
                f"the server (or a proxy or firewall in front of {url}) refused without saying why: "
                f"check client {client_id!r} and its credentials, that this machine may reach the "
                "token endpoint, and the server's logs"
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


def _verify_independently(assertion: str, description: KeyDescription) -> tuple[str, SigningError] | None:
    """Verify with jwcrypto, not with our signer code, and check the header names the key.

    ``None`` when both hold; else which failed, ``"signature"`` or ``"header"``, and the
    error to report.
    """
    from jwcrypto import jwk, jws
    from jwcrypto.common import JWException

    try:
        key = jwk.JWK(**dict(description.public_jwk))
        token = jws.JWS()
        token.deserialize(assertion)
        token.verify(key, alg=description.algorithm)
    except (JWException, ValueError, TypeError) as exc:
        return "signature", SigningError(
            f"the signature does not verify with the signer's own public key ({type(exc).__name__})"
        )
    header = token.jose_header
    if header.get("alg") != description.algorithm or header.get("kid") != description.key_id:
        return "header", SigningError("the assertion header does not name the signer's alg and kid")
    return None


def _signer_fix(error: KeylessM2MError, uri: str | None) -> str:
    if isinstance(error, MissingExtraError):
        return f"install the extra: pip install 'keyless-m2m[{error.extra}]'"
    if isinstance(error, ConfigurationError):
        return (
            f"check the signer URI {uri!r} (schemes: {', '.join(known_schemes())}) and --algorithm "
            "against the key's type"
        )
    code = f" (provider code {error.code})" if isinstance(error, SigningError) and error.code else ""
    return (
        f"check that these credentials may read the public key and sign with it{code}: e.g. "
        "kms:GetPublicKey + kms:Sign on AWS, the transit sign policy on Vault (docs/backends/)"
    )


def _discovery_fix(error: KeylessM2MError, issuer: str) -> str:
    if isinstance(error, DiscoveryError) and error.reason == "issuer_mismatch":
        return "configure the issuer exactly as the server publishes it, if it is the server you mean"
    if isinstance(error, TransportError):
        return f"check that {issuer} is right and reachable from here (DNS, proxy, firewall, TLS)"
    return (
        "check the issuer URL (no /.well-known suffix), or use --token-endpoint if the server "
        "publishes no metadata"
    )


def _support_fix(error: DiscoveryError) -> str:
    if error.reason == "grant_unsupported":
        return "enable the client_credentials grant on the authorization server"
    if error.reason == "algorithm_unsupported":
        return (
            "use a key and algorithm the server accepts (listed above): --algorithm for another "
            "alg of the same key (e.g. PS256 for RSA), or another key"
        )
    return (
        "register the client for one of the methods the server supports and choose it with "
        "--auth-method, or enable this method on the server"
    )
