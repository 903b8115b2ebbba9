"""The exception tree of keyless-m2m.

Every exception the library raises on purpose derives from :class:`KeylessM2MError`::

    KeylessM2MError                     .retryable
    ├── ConfigurationError              bad arguments, a key that cannot do the alg, ...
    │   └── MissingExtraError           (also ImportError) an optional extra is not installed
    ├── SigningError                    the signer (KMS/HSM/local key) failed
    ├── AssertionSourceError            the platform's JWT (workload identity) cannot be had  .reason
    ├── TransportError                  network trouble reaching the server     .reason
    ├── InvalidTokenResponseError       the token endpoint answered, but not with a token
    ├── TokenRequestError               an RFC 6749 section 5.2 error response
    │   ├── InvalidRequestError         invalid_request
    │   ├── InvalidClientError          invalid_client
    │   ├── InvalidGrantError           invalid_grant
    │   ├── UnauthorizedClientError     unauthorized_client
    │   ├── UnsupportedGrantTypeError   unsupported_grant_type
    │   ├── InvalidScopeError           invalid_scope
    │   ├── InvalidTargetError          invalid_target (RFC 8707)
    │   ├── InvalidDPoPProofError       invalid_dpop_proof (RFC 9449)
    │   ├── TemporarilyUnavailableError temporarily_unavailable  (retryable)
    │   ├── ServerError                 server_error (retryable)
    │   └── RefusedWithoutReasonError   HTTP 400/401/403 with no OAuth error body
    ├── DiscoveryError                  authorization server metadata is missing or wrong  .reason
    ├── CacheError                      the shared token cache (Redis) failed
    │   ├── CacheUnavailableError       it cannot be reached in time (retryable)
    │   └── CacheDecryptionError        an entry cannot be decrypted (wrong or retired key)
    └── ManagerClosedError              a token manager was used after ``aclose()``

Messages never contain a client secret, a client assertion, an access token or key
material. Exceptions raised by third-party SDKs are chained (``raise ... from exc``) only
after the library has checked that their text cannot carry such values; otherwise the
chain is cut and only the provider's error code is kept.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AssertionSourceError",
    "CacheDecryptionError",
    "CacheError",
    "CacheUnavailableError",
    "ConfigurationError",
    "DiscoveryError",
    "InvalidClientError",
    "InvalidDPoPProofError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidScopeError",
    "InvalidTargetError",
    "InvalidTokenResponseError",
    "KeylessM2MError",
    "ManagerClosedError",
    "MissingExtraError",
    "RefusedWithoutReasonError",
    "ServerError",
    "SigningError",
    "TemporarilyUnavailableError",
    "TokenRequestError",
    "TransportError",
    "UnauthorizedClientError",
    "UnsupportedGrantTypeError",
    "error_for_oauth_code",
]


class KeylessM2MError(Exception):
    """Root of every exception raised by keyless-m2m.

    ``retryable`` tells whether the same call may succeed if simply tried again later.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    # Subclasses take other constructor arguments than ``args`` holds (``ServerError(code,
    # status_code=...)``), so the default reduction, ``cls(*args)``, cannot rebuild them.
    # Rebuild without ``__init__`` instead, then restore the attributes (as trio's
    # ``Cancelled.__reduce__`` does); a subclass with an ``__init__`` of its own needs nothing.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args), dict(vars(self)))

    def __copy__(self) -> KeylessM2MError:
        """The same error without its traceback: the cause and context are kept, so one
        shared error can be raised in many tasks, each with a traceback of its own."""
        rebuild, arguments, state = self.__reduce__()[:3]
        clone: KeylessM2MError = rebuild(*arguments)
        clone.__dict__.update(state)
        clone.__cause__ = self.__cause__
        clone.__context__ = self.__context__
        clone.__suppress_context__ = self.__suppress_context__
        return clone


def _rebuild(cls: type[KeylessM2MError], args: tuple[Any, ...]) -> KeylessM2MError:
    """An instance of ``cls`` with ``args``, not initialised (unpickling restores the rest)."""
    return cls.__new__(cls, *args)


class ConfigurationError(KeylessM2MError, ValueError):
    """The library was configured in a way that cannot work (never retryable)."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"{module!r} is not installed: pip install 'keyless-m2m[{extra}]'",
            retryable=False,
        )
        self.extra = extra
        self.module = module

    def __reduce__(self) -> tuple[Any, ...]:
        # Through __init__: ImportError keeps ``msg`` outside ``__dict__``.
        return (type(self), (self.extra, self.module), dict(vars(self)))


class SigningError(KeylessM2MError):
    """The signer could not produce a signature.

    ``key`` names the key (an id, ARN or URL, never key material) and ``code`` the
    provider's error code when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        key: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.key = key
        self.code = code


class AssertionSourceError(KeylessM2MError):
    """A workload-identity source (``keyless_m2m.assertions``) could not give a usable JWT.

    ``reason`` says why, for code: ``"unreadable"`` (the token file cannot be read; a
    missing file is retryable, the platform may be rotating it), ``"unavailable"`` (the
    platform endpoint cannot be reached; retryable as network errors are), ``"refused"``
    (the platform endpoint answered an HTTP error, ``status_code``; retryable for 5xx, 408
    and 429), ``"malformed"`` (not a JWT, no ``exp``, an oversized file or answer) or
    ``"expired"`` (the JWT expired or is about to, also when fetched again; retryable).
    The message names the source, never the JWT nor the credentials that fetch it.
    """

    REASONS = frozenset({"unreadable", "unavailable", "refused", "malformed", "expired"})

    def __init__(
        self,
        message: str,
        *,
        reason: str = "malformed",
        retryable: bool = False,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason
        self.status_code = status_code


class TransportError(KeylessM2MError):
    """The token endpoint (or the metadata URL) could not be reached, the connection broke,
    or the deadline ran out.

    ``reason`` says which, for code: ``"tls_verification"`` (the server's certificate
    failed verification; never retryable), ``"tls"`` (another TLS failure; not retryable),
    ``"dns"``, ``"connection_refused"``, ``"connection_reset"``, ``"timeout"`` (one
    attempt ran past ``timeout``), ``"deadline"`` (the whole request ran past its
    ``deadline``), ``"proxy"``, ``"protocol"`` (the server broke HTTP) or ``"network"``
    (any other network failure). The message says the same for people.
    """

    retryable = True
    REASONS = frozenset(
        {
            "tls_verification",
            "tls",
            "dns",
            "connection_refused",
            "connection_reset",
            "timeout",
            "deadline",
            "proxy",
            "protocol",
            "network",
        }
    )

    def __init__(self, message: str, *, reason: str = "network", retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason


class InvalidTokenResponseError(KeylessM2MError):
    """The token endpoint answered with something that is not a valid token response."""

    def __init__(self, message: str, *, status_code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message, retryable=retryable)
        self.status_code = status_code


class TokenRequestError(KeylessM2MError):
    """The authorization server refused the token request (RFC 6749 section 5.2).

    Attributes: ``error`` (the OAuth error code), ``error_description``, ``error_uri``,
    ``status_code``, ``retryable`` and ``hint``: what the library knows that the server did
    not say (what the client sent that servers commonly refuse, and what to set instead),
    also at the end of the message; ``None`` when there is nothing to add.
    """

    oauth_error: str | None = None
    hint: str | None = None

    def __init__(
        self,
        error: str,
        *,
        status_code: int,
        error_description: str | None = None,
        error_uri: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        text = f"token request failed: {error} (HTTP {status_code})"
        if error_description:
            text += f": {error_description}"
        super().__init__(text, retryable=retryable)
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri
        self.status_code = status_code

    def add_hint(self, hint: str) -> None:
        """Append ``hint`` (text of the library's own, never of the server's) to the message."""
        self.hint = hint if self.hint is None else f"{self.hint}; {hint}"
        self.args = (f"{self.args[0]} (hint: {hint})", *self.args[1:])


class InvalidRequestError(TokenRequestError):
    oauth_error = "invalid_request"


class InvalidClientError(TokenRequestError):
    oauth_error = "invalid_client"


class InvalidGrantError(TokenRequestError):
    oauth_error = "invalid_grant"


class UnauthorizedClientError(TokenRequestError):
    oauth_error = "unauthorized_client"


class UnsupportedGrantTypeError(TokenRequestError):
    oauth_error = "unsupported_grant_type"


class InvalidScopeError(TokenRequestError):
    oauth_error = "invalid_scope"


class InvalidTargetError(TokenRequestError):
    oauth_error = "invalid_target"


class InvalidDPoPProofError(TokenRequestError):
    """The server refused the DPoP proof (RFC 9449 section 5): its key or algorithm, or a
    claim it checks (``htu``, ``iat``, ``jti``). Not retried: another proof from the same
    key gets the same answer (a missing nonce is handled: ``use_dpop_nonce``)."""

    oauth_error = "invalid_dpop_proof"


class TemporarilyUnavailableError(TokenRequestError):
    oauth_error = "temporarily_unavailable"
    retryable = True


class ServerError(TokenRequestError):
    oauth_error = "server_error"
    retryable = True


class RefusedWithoutReasonError(TokenRequestError):
    """The token endpoint refused the request (HTTP 400, 401 or 403) without an OAuth
    error body: an empty body, or HTML from a proxy, gateway or firewall in front of the
    server. It is a refusal, not a malformed answer, and not retryable: the same request
    is refused again. ``error`` is ``"refused_without_reason"``; ``status_code`` says
    which status came."""

    def __init__(self, status_code: int, content_type: str) -> None:
        self.content_type = content_type
        super().__init__("refused_without_reason", status_code=status_code, retryable=False)
        self.args = (
            f"token request refused: HTTP {status_code} ({content_type}) without an OAuth error "
            "body, so the server gave no reason; check the client's registration and credentials, "
            "and whether a proxy or firewall in front of the token endpoint refuses this caller",
        )


class DiscoveryError(KeylessM2MError):
    """Authorization server metadata could not be fetched or does not fit the client.

    ``reason`` says which, for code: ``"not_found"`` (no metadata at any location),
    ``"refused"`` (a metadata body over the size cap, in a refused coding, or corrupt),
    ``"issuer_mismatch"`` (the document names another issuer), ``"invalid"`` (the document
    is unusable: no ``token_endpoint``, a list that is not a list of strings),
    ``"unusable_token_endpoint"`` (its token endpoint is refused: not a valid URL, one with
    ``user:password@``, plain ``http://`` to a remote host, or plain ``http://`` from
    metadata fetched over https), ``"grant_unsupported"`` (the server does not list the
    client-credentials grant), ``"method_unsupported"`` (nor the client's authentication
    method) or ``"algorithm_unsupported"`` (nor the client assertion's algorithm). The
    message says the same for people.
    """

    REASONS = frozenset(
        {
            "not_found",
            "refused",
            "issuer_mismatch",
            "invalid",
            "unusable_token_endpoint",
            "grant_unsupported",
            "method_unsupported",
            "algorithm_unsupported",
        }
    )

    def __init__(self, message: str, *, reason: str = "invalid", retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.reason = reason


class CacheError(KeylessM2MError):
    """The shared token cache failed. The token manager never lets this reach callers: it
    falls back to fetching tokens itself (see ``docs/scaling.md``)."""


class CacheUnavailableError(CacheError):
    """The shared cache did not answer within its timeout, or is known to be down."""

    retryable = True


class CacheDecryptionError(CacheError):
    """A cached entry cannot be decrypted or authenticated with any configured key; the
    entry is treated as a miss."""


class ManagerClosedError(KeylessM2MError):
    """A token manager was used after it was closed."""


_BY_CODE: dict[str, type[TokenRequestError]] = {
    cls.oauth_error: cls
    for cls in (
        InvalidRequestError,
        InvalidClientError,
        InvalidGrantError,
        UnauthorizedClientError,
        UnsupportedGrantTypeError,
        InvalidScopeError,
        InvalidTargetError,
        InvalidDPoPProofError,
        TemporarilyUnavailableError,
        ServerError,
    )
    if cls.oauth_error
}


def error_for_oauth_code(code: str) -> type[TokenRequestError]:
    """The exception class for an RFC 6749 error code (``TokenRequestError`` if unknown)."""
    return _BY_CODE.get(code, TokenRequestError)
