"""How the client proves who it is at the token endpoint.

- :class:`PrivateKeyJWT` (RFC 7523 section 2.2): a short-lived JWT signed by a
  :class:`~keyless_m2m.signers.Signer`, fresh for every HTTP attempt;
- :class:`ClientSecretBasic` (RFC 6749 section 2.3.1): HTTP Basic with both parts
  form-encoded first, as the RFC requires (many libraries forget this), or raw
  (``encoding="raw"``), as many deployed servers compare them;
- :class:`ClientSecretPost`: ``client_id``/``client_secret`` in the form body;
- :class:`TlsClientAuth` and :class:`SelfSignedTlsClientAuth` (RFC 8705 section 2): the
  TLS client certificate of the connection, ``client_id`` in the form body.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import ssl
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable
from urllib.parse import quote_plus

from . import _telemetry
from ._jose import b64url, b64url_decode, encode_segment, jwk_thumbprint, public_jwk
from ._secret import Secret
from .errors import ConfigurationError
from .mtls import ClientCertificate
from .signers import Signer

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "AudiencePolicy",
    "BasicEncoding",
    "ClientAuth",
    "ClientSecretBasic",
    "ClientSecretPost",
    "PreparedAuth",
    "PrivateKeyJWT",
    "Profile",
    "SelfSignedTlsClientAuth",
    "TlsClientAuth",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RFC7523BIS_TYP = "client-authentication+jwt"
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "nbf"})
MAX_ASSERTION_LIFETIME = 300

AudiencePolicy = Literal["auto", "issuer", "token_endpoint"]
"""Which ``aud`` a client assertion carries (see :class:`PrivateKeyJWT`)."""
AudienceKind = Literal["issuer", "token_endpoint", "audience"]
_AUDIENCE_POLICIES: tuple[str, ...] = get_args(AudiencePolicy)


@dataclass(frozen=True, slots=True)
class PreparedAuth:
    """What one token request carries to authenticate the client.

    Secret values (a client secret, an assertion, an ``Authorization`` header) are
    :class:`~keyless_m2m._secret.Secret`: the token endpoint reveals them only when it
    writes the request, and scrubs every form of them from what the server answers.
    """

    form: Mapping[str, str | Secret[str]] = field(repr=False)
    headers: Mapping[str, str | Secret[str]] = field(default_factory=dict, repr=False)
    signed: bool = False
    #: What to tell the user if the server refuses these credentials (``invalid_client``):
    #: what was sent that servers commonly refuse, and what to set instead. Never a secret.
    hint: str | None = None
    #: The client has another form of credentials to try once if the server refuses these
    #: (``PrivateKeyJWT``'s ``audience_policy="auto"``: the token endpoint URL as ``aud``).
    alternative: bool = False


@runtime_checkable
class ClientAuth(Protocol):
    """A client authentication method (``token_endpoint_auth_method`` in RFC 7591 terms)."""

    client_id: str

    @property
    def method(self) -> str:
        """The registered method name, e.g. ``"private_key_jwt"``."""
        ...

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        """Credentials for one HTTP attempt at ``token_endpoint``."""
        ...


def _check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not client_id:
        raise ConfigurationError("client_id must be a non-empty string")
    return client_id


Profile = Literal["fapi2", "entra"]
"""A set of choices a kind of server requires (see :class:`PrivateKeyJWT`)."""


@dataclass(frozen=True, slots=True)
class _Profile:
    name: str
    algorithms: frozenset[str]
    audience_policy: AudiencePolicy
    min_rsa_bits: int = 2048
    needs_certificate: bool = False
    correct_clock_skew: bool = False


_PROFILES: dict[str, _Profile] = {
    # FAPI 2.0 Security Profile: PS256, ES256 or EdDSA (5.4.1), RSA keys of 2048 bits or
    # more (5.4.1), aud = the issuer as a single string (5.3.3.1, rfc7523bis), and clocks
    # that may differ from the server's (5.3.2.1: iat from the server's clock).
    "fapi2": _Profile("fapi2", frozenset({"PS256", "ES256", "EdDSA"}), "issuer", correct_clock_skew=True),
    # Microsoft Entra ID certificate credentials: PS256 with the x5t#S256 header, aud =
    # the token endpoint URL (https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token).
    "entra": _Profile("entra", frozenset({"PS256"}), "token_endpoint", needs_certificate=True),
}
MIN_CLOCK_CORRECTION = 2.0  # seconds: below this, a Date header's 1 s resolution is noise

_CERTIFICATE_HEADERS = frozenset({"x5t#S256", "x5t", "x5c"})
_RESERVED_HEADERS = frozenset({"alg", "typ", "crit"}) | _CERTIFICATE_HEADERS


def _load_certificates(certificate: object) -> list[x509.Certificate]:
    """A leaf certificate and its chain, from a ``cryptography`` certificate, PEM text or
    bytes (one or more certificates, leaf first), DER bytes, or a sequence of those."""
    from cryptography import x509  # here: 77 ms to import, needed only with certificate=

    if isinstance(certificate, x509.Certificate):
        return [certificate]
    if isinstance(certificate, str):
        certificate = certificate.encode("ascii", "replace")
    if isinstance(certificate, bytes | bytearray):
        data = bytes(certificate)
        try:
            if b"-----BEGIN" in data:
                found = x509.load_pem_x509_certificates(data)
            else:
                found = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise ConfigurationError("certificate is not a PEM or DER X.509 certificate") from None
        return found
    if isinstance(certificate, Sequence):
        chain = [c for item in certificate for c in _load_certificates(item)]
        if chain:
            return chain
    raise ConfigurationError(
        "certificate must be a cryptography x509.Certificate, PEM or DER bytes, or a sequence of them"
    )


class PrivateKeyJWT:
    """``private_key_jwt`` client authentication (RFC 7523).

    >>> auth = PrivateKeyJWT("my-client", signer)
    >>> auth = PrivateKeyJWT("my-client", signer, issuer="https://auth.example")

    Claims: ``iss = sub = client_id``; ``aud`` (below); ``iat``; ``exp = iat + lifetime``
    (at most 300 s); a 192-bit random ``jti``. ``extra_claims`` may not override those.

    ``aud`` is always one string, chosen by ``audience_policy`` (docs/security.md, "The
    audience"):

    - ``"auto"`` (the default): the authorization server's **issuer identifier** when it is
      known (``issuer=`` here, or discovered by ``TokenManager.from_issuer``), with the header
      ``typ: client-authentication+jwt`` (draft-ietf-oauth-rfc7523bis section 4, OAuth 2.1
      section 2.4, FAPI 2.0 section 5.3.3.1). If the server refuses that assertion
      (``invalid_client``, or a refusal without reason), the token endpoint tries once more at
      once with the **token endpoint URL** as ``aud`` and ``typ: JWT``, and keeps that form
      for the server if it works. When the issuer is not known, the token endpoint URL.
    - ``"issuer"``: the issuer identifier always, never anything else (strict servers, FAPI
      2.0); a request without a known issuer is a :class:`~keyless_m2m.ConfigurationError`.
    - ``"token_endpoint"``: the token endpoint URL always (what most deployed servers
      document); ``typ: JWT``.

    ``audience=`` overrides all of them with one value you configure (with ``typ:
    client-authentication+jwt`` when ``issuer=`` is given too). ``typ=`` overrides the
    header's ``typ`` in every form (``""``: no ``typ``).

    Header: ``alg`` and ``kid`` from the signer (``headers=`` may set another ``kid``, and
    any other parameter except ``alg``, ``typ`` and ``crit``). ``certificate=`` (an X.509
    certificate of the signer's key, e.g. from ``keyless-m2m certificate``; a chain leaf
    first) adds the parameters named in ``certificate_headers``: ``x5t#S256`` by default,
    ``x5t`` (SHA-1, for servers that know only that) and ``x5c`` (the chain).

    ``profile=`` makes the choices a kind of server requires in one argument
    (docs/security.md, "Profiles"), checked before anything is signed:

    - ``"fapi2"`` (FAPI 2.0 Security Profile): PS256, ES256 or EdDSA only, RSA keys of at
      least 2048 bits, ``audience_policy="issuer"`` (the issuer as one string, never a
      fallback), and ``iat`` from the server's clock (``correct_clock_skew``: the server's
      ``Date`` minus ours, measured at discovery and at every token response, when it is
      2 s or more); and sender-constrained tokens (5.3.2.2): a token endpoint or manager
      with this client refuses to be built without ``dpop=`` or ``client_certificate=``.
    - ``"entra"`` (Microsoft Entra ID certificate credentials): PS256 only, ``certificate=``
      required (``x5t#S256`` in the header), ``audience_policy="token_endpoint"``.
    """

    method = "private_key_jwt"

    def __init__(
        self,
        client_id: str,
        signer: Signer,
        audience: str | None = None,
        lifetime: int = 60,
        typ: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        *,
        issuer: str | None = None,
        audience_policy: AudiencePolicy | None = None,
        headers: Mapping[str, Any] | None = None,
        certificate: Any = None,
        certificate_headers: Collection[str] = ("x5t#S256",),
        profile: Profile | None = None,
        correct_clock_skew: bool | None = None,
    ) -> None:
        self.client_id = _check_client_id(client_id)
        if not isinstance(signer, Signer):
            raise ConfigurationError("signer must implement describe(), sign() and aclose()")
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int)
            or not 1 <= lifetime <= MAX_ASSERTION_LIFETIME
        ):
            raise ConfigurationError(f"lifetime must be 1..{MAX_ASSERTION_LIFETIME} seconds")
        chosen = _PROFILES.get(profile) if isinstance(profile, str) else None
        if profile is not None and chosen is None:
            raise ConfigurationError(
                f"profile must be one of {', '.join(map(repr, _PROFILES))}, got {profile!r}"
            )
        if chosen is not None:
            if audience_policy not in (None, chosen.audience_policy) or audience is not None:
                raise ConfigurationError(
                    f"profile={chosen.name!r} sends aud = the "
                    f"{chosen.audience_policy.replace('_', ' ')}: do not pass audience= or another "
                    "audience_policy"
                )
            if correct_clock_skew is False and chosen.correct_clock_skew:
                raise ConfigurationError(f"profile={chosen.name!r} corrects iat by the server's clock")
            audience_policy = chosen.audience_policy
            if chosen.needs_certificate and certificate is None:
                raise ConfigurationError(
                    f"profile={chosen.name!r} needs certificate= (the certificate registered for the "
                    "key; `keyless-m2m certificate` mints one signed in the KMS)"
                )
        audience_policy = audience_policy or "auto"
        if audience_policy not in _AUDIENCE_POLICIES:
            raise ConfigurationError(
                f"audience_policy must be one of {', '.join(map(repr, _AUDIENCE_POLICIES))}, "
                f"got {audience_policy!r}"
            )
        for name, value in (("audience", audience), ("issuer", issuer), ("typ", typ)):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{name} must be a string")
        if audience == "" or issuer == "":
            raise ConfigurationError("audience and issuer must not be empty")
        extra = dict(extra_claims or {})
        clash = _RESERVED_CLAIMS & extra.keys()
        if clash:
            raise ConfigurationError(f"extra_claims may not set {', '.join(sorted(clash))}")
        extra_headers = dict(headers or {})
        clash = _RESERVED_HEADERS & extra_headers.keys()
        if clash:
            raise ConfigurationError(
                f"headers may not set {', '.join(sorted(clash))} (use typ=, certificate=)"
            )
        wanted = set(certificate_headers)
        if not wanted <= _CERTIFICATE_HEADERS:
            raise ConfigurationError(
                f"certificate_headers may name only {', '.join(sorted(_CERTIFICATE_HEADERS))}"
            )
        self.certificates = _load_certificates(certificate) if certificate is not None else []
        if self.certificates and not wanted:
            raise ConfigurationError("certificate= needs at least one of certificate_headers")
        self.signer = signer
        self.audience = audience
        self.issuer = issuer
        self.audience_policy: AudiencePolicy = audience_policy
        self.lifetime = lifetime
        self.typ = typ
        self.extra_claims = extra
        self.extra_headers = extra_headers
        self.certificate_headers = frozenset(wanted)
        self.profile = profile
        self._profile = chosen
        self.correct_clock_skew = bool(
            correct_clock_skew if correct_clock_skew is not None else chosen and chosen.correct_clock_skew
        )
        self._headers: dict[str, str] = {}  # typ -> encoded header segment

    def __repr__(self) -> str:
        return f"PrivateKeyJWT(client_id={self.client_id!r}, signer={self.signer!r})"

    def audience_for(
        self, token_endpoint: str, issuer: str | None = None, *, fallback: bool = False
    ) -> tuple[str, AudienceKind]:
        """The ``aud`` of an assertion POSTed to ``token_endpoint`` and which kind it is.

        ``issuer`` is the issuer identifier the token endpoint knows (from discovery);
        ``issuer=`` given here wins. ``fallback``: the server refused the issuer form.
        """
        if self.audience is not None:
            return self.audience, "audience"
        known = self.issuer or issuer
        if self.audience_policy == "token_endpoint" or (
            self.audience_policy == "auto" and (known is None or fallback)
        ):
            return token_endpoint, "token_endpoint"
        if known is None:
            raise ConfigurationError(
                "audience_policy='issuer' needs the authorization server's issuer identifier: "
                "pass PrivateKeyJWT(..., issuer=...) or use TokenManager.from_issuer(...)"
            )
        return known, "issuer"

    def _typ(self, kind: AudienceKind) -> str:
        if self.typ is not None:
            return self.typ
        explicit = kind == "audience" and self.issuer is not None  # audience= and issuer= given
        return RFC7523BIS_TYP if kind == "issuer" or explicit else "JWT"

    async def _header(self, typ: str) -> str:
        segment = self._headers.get(typ)
        if segment is None:
            description = await self.signer.describe()
            if self._profile is not None:
                _check_profile_key(self._profile, description.algorithm, description.public_jwk)
            header: dict[str, Any] = {"alg": description.algorithm, "kid": description.key_id}
            header.update(self.extra_headers)
            if self.certificates:
                header.update(self._certificate_header(description.public_jwk))
            if typ:
                header["typ"] = typ
            segment = self._headers[typ] = encode_segment(header)
        return segment

    def _certificate_header(self, signer_jwk: Mapping[str, str]) -> dict[str, Any]:
        leaf = self.certificates[0]
        try:
            leaf_jwk = public_jwk(leaf.public_key())  # type: ignore[arg-type]
        except (TypeError, ValueError, ConfigurationError):
            raise ConfigurationError("the certificate's key is not an RSA, EC or Ed25519 key") from None
        if jwk_thumbprint(leaf_jwk) != jwk_thumbprint(signer_jwk):
            raise ConfigurationError(
                "the certificate is not for the signer's key (its public key differs): mint one "
                "with `keyless-m2m certificate` for this signer"
            )
        from cryptography.hazmat.primitives.serialization import Encoding

        der = leaf.public_bytes(Encoding.DER)
        header: dict[str, Any] = {}
        if "x5t#S256" in self.certificate_headers:
            header["x5t#S256"] = b64url(hashlib.sha256(der).digest())
        if "x5t" in self.certificate_headers:
            header["x5t"] = b64url(hashlib.sha1(der, usedforsecurity=False).digest())
        if "x5c" in self.certificate_headers:
            header["x5c"] = [
                base64.b64encode(c.public_bytes(Encoding.DER)).decode("ascii") for c in self.certificates
            ]
        return header

    async def assertion(
        self,
        token_endpoint: str,
        *,
        issuer: str | None = None,
        fallback: bool = False,
        clock_skew: float | None = None,
    ) -> str:
        """Mint one signed client assertion (JWS compact serialization)."""
        aud, kind = self.audience_for(token_endpoint, issuer, fallback=fallback)
        return (await self._mint(aud, kind, clock_skew)).reveal()

    def _now(self, clock_skew: float | None) -> int:
        """``iat``: this machine's clock, or, with ``correct_clock_skew``, the server's as
        last measured (its ``Date`` header minus ours), when they differ by 2 s or more."""
        now = time.time()
        if self.correct_clock_skew and clock_skew is not None and abs(clock_skew) >= MIN_CLOCK_CORRECTION:
            now += clock_skew
        return int(now)

    async def _mint(self, aud: str, kind: AudienceKind, clock_skew: float | None = None) -> Secret[str]:
        header = await self._header(self._typ(kind))
        now = self._now(clock_skew)
        claims: dict[str, Any] = {
            **self.extra_claims,
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(24),
        }
        signing_input = f"{header}.{encode_segment(claims)}".encode("ascii")
        # No local ever holds the signature or the assertion: nothing below can raise.
        return Secret(f"{signing_input.decode('ascii')}.{b64url(await self._sign(signing_input))}")

    async def _sign(self, signing_input: bytes) -> bytes:
        # Through the telemetry hooks (a signature span when an integration is installed).
        return await _telemetry.sign(self.signer, signing_input, "client_assertion")

    async def prepare(
        self,
        token_endpoint: str,
        *,
        issuer: str | None = None,
        fallback: bool = False,
        clock_skew: float | None = None,
    ) -> PreparedAuth:
        """Credentials for one attempt at ``token_endpoint``; ``issuer`` and ``fallback`` as
        in :meth:`audience_for`, ``clock_skew`` the server's clock minus ours (the token
        endpoint passes them)."""
        aud, kind = self.audience_for(token_endpoint, issuer, fallback=fallback)
        return PreparedAuth(
            form={
                "client_id": self.client_id,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": await self._mint(aud, kind, clock_skew),
            },
            signed=True,
            hint=self._refusal_hint(aud, kind, token_endpoint, fallback),
            alternative=kind == "issuer" and self.audience_policy == "auto",
        )

    def _refusal_hint(self, aud: str, kind: AudienceKind, token_endpoint: str, fallback: bool) -> str:
        typ = self._typ(kind) or "none"
        if kind == "audience":
            return f"the assertion's aud was {aud!r} (audience=); check that the server documents this value"
        if kind == "issuer":
            if self.audience_policy == "auto":
                return (
                    f"the assertion's aud was the issuer identifier {aud!r} (rfc7523bis), typ {typ!r}; "
                    "the token endpoint URL is tried next"
                )
            return (
                f"the assertion's aud was the issuer identifier {aud!r} (audience_policy='issuer'), "
                f"typ {typ!r}; a server that accepts only its token endpoint URL needs "
                "audience_policy='auto' or 'token_endpoint'"
            )
        if fallback:
            return (
                f"the server refused the assertion with aud = the token endpoint URL {aud!r} after "
                "refusing it with aud = the issuer identifier: unless the server said the audience "
                "was wrong both times, check the client id, the registered public key "
                "(`keyless-m2m jwks`), its algorithm and the clock"
            )
        return (
            f"the assertion's aud was the token endpoint URL {aud!r}, typ {typ!r}; a server that "
            "requires the issuer identifier (rfc7523bis) needs issuer=... or TokenManager.from_issuer"
        )


def _check_profile_key(profile: _Profile, algorithm: str, jwk: Mapping[str, str]) -> None:
    if algorithm not in profile.algorithms:
        raise ConfigurationError(
            f"profile={profile.name!r} allows {', '.join(sorted(profile.algorithms))} client "
            f"assertions, not {algorithm}: choose the signer's algorithm (or key) accordingly"
        )
    if jwk.get("kty") == "RSA":
        bits = len(b64url_decode(jwk["n"]).lstrip(b"\0")) * 8
        if bits < profile.min_rsa_bits:
            raise ConfigurationError(
                f"profile={profile.name!r} needs an RSA key of at least {profile.min_rsa_bits} bits, "
                f"this one has {bits}"
            )


def _wrap_secret(client_secret: object) -> Secret[str]:
    value = client_secret.reveal() if isinstance(client_secret, Secret) else client_secret
    if not isinstance(value, str) or not value:
        raise ConfigurationError("client_secret must be a non-empty string (or a Secret of one)")
    return client_secret if isinstance(client_secret, Secret) else Secret(value)


class _ClientSecret:
    """Holds the secret in a :class:`~keyless_m2m._secret.Secret` from the first line on:
    a ``ConfigurationError`` for the client id must not find it in a frame's locals."""

    def __init__(self, client_id: str, client_secret: str | Secret[str]) -> None:
        self._secret = _wrap_secret(client_secret)
        del client_secret
        self.client_id = _check_client_id(client_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, client_secret=<hidden>)"


BasicEncoding = Literal["form", "raw"]
"""How :class:`ClientSecretBasic` puts id and secret in the header (see there)."""
_BASIC_ENCODINGS: tuple[str, ...] = get_args(BasicEncoding)


def _basic_credential(client_id: str, secret: Secret[str], encoding: str) -> tuple[Secret[str], bool]:
    """The ``Authorization`` value, and whether form-encoding changed the secret (a bool:
    nothing of the secret leaves this frame but the Secret). Never raises (quote_plus and
    base64 take any str), so its frame with the revealed value never appears in a
    traceback."""
    if encoding == "raw":
        pair = f"{client_id}:{secret.reveal()}"
        changed = False
    else:
        encoded = quote_plus(secret.reveal())
        pair = f"{quote_plus(client_id)}:{encoded}"
        changed = encoded != secret.reveal()
    return Secret("Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")), changed


def _basic_hint(id_changed: bool, secret_changed: bool) -> str | None:
    """What to say when a server refuses a Basic credential that form-encoding changed:
    which part changed, never how (nor which characters the secret holds)."""
    if id_changed and secret_changed:
        what = "the client id and the client secret contain"
    elif id_changed:
        what = "the client id contains"
    elif secret_changed:
        what = "the client secret contains"
    else:
        return None
    return (
        f"{what} characters that RFC 6749 form-encoding changes in client_secret_basic; servers "
        "that compare the raw id:secret need ClientSecretBasic(..., encoding='raw') or ClientSecretPost"
    )


class ClientSecretBasic(_ClientSecret):
    """``client_secret_basic``: HTTP Basic with the client id and secret.

    >>> auth = ClientSecretBasic("billing", secret)
    >>> auth = ClientSecretBasic("billing", secret, encoding="raw")

    ``encoding="form"`` (the default) form-encodes both first, as RFC 6749 section 2.3.1
    requires, so ``:`` or ``%`` in a secret survive the trip to a server that decodes them.
    Many deployed servers compare the raw ``id:secret`` instead: ``encoding="raw"`` sends
    ``base64(id:secret)`` unencoded (a client id holding ``:`` cannot be sent so: a
    :class:`~keyless_m2m.ConfigurationError`). When form-encoding changed the id or the
    secret and the server answers ``invalid_client``, the error's hint says so (never
    what the secret holds) and names the fix. ``client_secret`` is a ``str`` or a
    :class:`~keyless_m2m._secret.Secret`.
    """

    method = "client_secret_basic"

    def __init__(
        self, client_id: str, client_secret: str | Secret[str], *, encoding: BasicEncoding = "form"
    ) -> None:
        client_secret = _wrap_secret(client_secret)  # rebinding: the raw value leaves this frame
        super().__init__(client_id, client_secret)
        if encoding not in _BASIC_ENCODINGS:
            raise ConfigurationError("encoding must be 'form' (RFC 6749 section 2.3.1) or 'raw'")
        if encoding == "raw" and ":" in self.client_id:
            raise ConfigurationError(
                "ClientSecretBasic(encoding='raw') cannot send a client id that contains ':' (the "
                "server would split id:secret there); use encoding='form' or ClientSecretPost"
            )
        self.encoding: BasicEncoding = encoding
        self._header, secret_changed = _basic_credential(self.client_id, self._secret, encoding)
        id_changed = encoding == "form" and quote_plus(self.client_id) != self.client_id
        self._hint = _basic_hint(id_changed, secret_changed)

    def __repr__(self) -> str:
        shown = "" if self.encoding == "form" else f", encoding={self.encoding!r}"
        return f"ClientSecretBasic(client_id={self.client_id!r}, client_secret=<hidden>{shown})"

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(form={}, headers={"Authorization": self._header}, hint=self._hint)


class ClientSecretPost(_ClientSecret):
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the form body.
    ``client_secret`` is a ``str`` or a :class:`~keyless_m2m._secret.Secret`."""

    method = "client_secret_post"

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(form={"client_id": self.client_id, "client_secret": self._secret})


# -- mutual TLS (RFC 8705 section 2) -------------------------------------------------------------


class TlsClientAuth:
    """``tls_client_auth`` (RFC 8705 section 2.1): the client proves who it is with the TLS
    client certificate of the token request's connection, issued by a CA the server trusts
    and registered by its subject (``tls_client_auth_subject_dn``) or a subject alternative
    name (``tls_client_auth_san_dns``...). The form carries only ``client_id``.

    >>> auth = TlsClientAuth("billing", certificate="client.pem", key="client.key")
    >>> auth = TlsClientAuth("billing", ssl_context=context)

    ``certificate``/``key``/``password``/``ssl_context`` as
    :class:`~keyless_m2m.mtls.ClientCertificate` (or ``certificate=`` one already made).
    The token endpoint's own HTTP client presents the certificate; an ``http_client`` you
    pass must present it itself. Tokens obtained so are usually certificate-bound
    (section 3): use them through a connection that presents the same certificate
    (:func:`~keyless_m2m.mtls.client_ssl_context`). The key and its password never
    appear in a ``repr``, an error or a log line.
    """

    method = "tls_client_auth"

    def __init__(
        self,
        client_id: str,
        certificate: ClientCertificate | str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        *,
        password: str | bytes | Secret[str] | Secret[bytes] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        secret: Any = password if password is None or isinstance(password, Secret) else Secret(password)
        del password  # from here on only the Secret: an error below must not find the value
        if isinstance(certificate, ClientCertificate):
            if key is not None or secret is not None or ssl_context is not None:
                raise ConfigurationError("pass key=, password= and ssl_context= to the ClientCertificate")
            self.client_certificate = certificate
        else:
            self.client_certificate = ClientCertificate(
                certificate, key, password=secret, ssl_context=ssl_context
            )
        self.client_id = _check_client_id(client_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, {self.client_certificate!r})"

    def _hint(self) -> str:
        thumbprint = self.client_certificate.thumbprint
        shown = f" (x5t#S256 {thumbprint})" if thumbprint else ""
        return (
            f"the client is configured to authenticate with its TLS client certificate{shown}: "
            "check that the certificate reaches the server (an http_client= of your own must "
            "present it: keyless_m2m.mtls.client_ssl_context), that the server trusts its CA "
            "and that the client's tls_client_auth_subject_dn or SAN registration matches it"
        )

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(form={"client_id": self.client_id}, hint=self._hint())


class SelfSignedTlsClientAuth(TlsClientAuth):
    """``self_signed_tls_client_auth`` (RFC 8705 section 2.2): as :class:`TlsClientAuth`,
    with a self-signed certificate that the server knows by its registration (the
    certificate in the client's ``jwks`` as ``x5c``, compared by its ``x5t#S256``,
    :attr:`ClientCertificate.thumbprint <keyless_m2m.mtls.ClientCertificate.thumbprint>`),
    not by a CA.

    >>> auth = SelfSignedTlsClientAuth("billing", "client.pem", "client.key")
    """

    method = "self_signed_tls_client_auth"

    def _hint(self) -> str:
        thumbprint = self.client_certificate.thumbprint
        shown = f"x5t#S256 {thumbprint}" if thumbprint else "its x5t#S256"
        return (
            "the client is configured to authenticate with a self-signed TLS client certificate: "
            "check that it reaches the server and that the "
            f"client's registered jwks holds this certificate ({shown}) in x5c"
        )
