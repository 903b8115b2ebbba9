"""How the client proves who it is at the token endpoint.

- :class:`PrivateKeyJWT` (RFC 7523 section 2.2): a short-lived JWT signed by a
  :class:`~keyless_m2m.signers.Signer`, fresh for every HTTP attempt;
- :class:`ClientSecretBasic` (RFC 6749 section 2.3.1): HTTP Basic with both parts
  form-encoded first, as the RFC requires (many libraries forget this);
- :class:`ClientSecretPost`: ``client_id``/``client_secret`` in the form body.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote_plus

from ._jose import b64url, encode_segment
from ._secret import Secret
from .errors import ConfigurationError
from .signers import Signer

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "ClientAuth",
    "ClientSecretBasic",
    "ClientSecretPost",
    "PreparedAuth",
    "PrivateKeyJWT",
]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RFC7523BIS_TYP = "client-authentication+jwt"
_RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "exp", "jti", "nbf"})
MAX_ASSERTION_LIFETIME = 300


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


class PrivateKeyJWT:
    """``private_key_jwt`` client authentication (RFC 7523).

    >>> auth = PrivateKeyJWT("my-client", signer)                     # doctest: +SKIP
    >>> auth = PrivateKeyJWT("my-client", signer, issuer="https://auth.example")  # doctest: +SKIP

    Claims: ``iss = sub = client_id``; ``aud`` = ``audience`` if given, else the issuer
    identifier when ``issuer`` is given (draft-ietf-oauth-rfc7523bis, which also sets the
    header ``typ: client-authentication+jwt``), else the token endpoint URL; ``iat``;
    ``exp = iat + lifetime`` (at most 300 s); a 192-bit random ``jti``. ``typ`` defaults to
    ``"JWT"`` (what PyJWT and most peers send). ``extra_claims`` may not override those.
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
        extra = dict(extra_claims or {})
        clash = _RESERVED_CLAIMS & extra.keys()
        if clash:
            raise ConfigurationError(f"extra_claims may not set {', '.join(sorted(clash))}")
        self.signer = signer
        self.audience = audience
        self.issuer = issuer
        self.lifetime = lifetime
        self.typ = typ if typ is not None else (RFC7523BIS_TYP if issuer is not None else "JWT")
        self.extra_claims = extra
        self._header_segment: str | None = None

    def __repr__(self) -> str:
        return f"PrivateKeyJWT(client_id={self.client_id!r}, signer={self.signer!r})"

    async def _header(self) -> str:
        if self._header_segment is None:
            description = await self.signer.describe()
            header = {"alg": description.algorithm, "kid": description.key_id}
            if self.typ:
                header["typ"] = self.typ
            self._header_segment = encode_segment(header)
        return self._header_segment

    async def assertion(self, token_endpoint: str) -> str:
        """Mint one signed client assertion (JWS compact serialization)."""
        return (await self._mint(token_endpoint)).reveal()

    async def _mint(self, token_endpoint: str) -> Secret[str]:
        header = await self._header()
        now = int(time.time())
        claims: dict[str, Any] = {
            **self.extra_claims,
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.audience or self.issuer or token_endpoint,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": secrets.token_urlsafe(24),
        }
        signing_input = f"{header}.{encode_segment(claims)}".encode("ascii")
        # No local ever holds the signature or the assertion: nothing below can raise.
        return Secret(f"{signing_input.decode('ascii')}.{b64url(await self.signer.sign(signing_input))}")

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(
            form={
                "client_id": self.client_id,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": await self._mint(token_endpoint),
            },
            signed=True,
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


def _basic_credential(client_id: str, secret: Secret[str]) -> Secret[str]:
    # Never raises (quote_plus and base64 take any str), so its frame with the revealed
    # value never appears in a traceback.
    pair = f"{quote_plus(client_id)}:{quote_plus(secret.reveal())}"
    return Secret("Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii"))


class ClientSecretBasic(_ClientSecret):
    """``client_secret_basic``: HTTP Basic with id and secret form-encoded first
    (RFC 6749 section 2.3.1), so ``:`` or ``%`` in a secret survive the trip.
    ``client_secret`` is a ``str`` or a :class:`~keyless_m2m._secret.Secret`."""

    method = "client_secret_basic"

    def __init__(self, client_id: str, client_secret: str | Secret[str]) -> None:
        client_secret = _wrap_secret(client_secret)  # rebinding: the raw value leaves this frame
        super().__init__(client_id, client_secret)
        self._header = _basic_credential(self.client_id, self._secret)

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(form={}, headers={"Authorization": self._header})


class ClientSecretPost(_ClientSecret):
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the form body.
    ``client_secret`` is a ``str`` or a :class:`~keyless_m2m._secret.Secret`."""

    method = "client_secret_post"

    async def prepare(self, token_endpoint: str) -> PreparedAuth:
        return PreparedAuth(form={"client_id": self.client_id, "client_secret": self._secret})
