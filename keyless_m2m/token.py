"""The access token a token endpoint issued, and the rules every token obeys before it is
served (from a token response or from a shared cache alike)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from time import time
from typing import Any, Final


def utc_now() -> datetime:
    """Now, as an aware UTC datetime, on the library's wall clock: the one place it is
    read (through the module-level ``time`` name a test clock replaces)."""
    return datetime.fromtimestamp(time(), UTC)


DPOP: Final = "DPoP"  # the token_type of DPoP-bound tokens (RFC 9449 section 5)


@dataclass(frozen=True, slots=True, eq=False)
class AccessToken:
    """An access token and what the authorization server said about it.

    - ``value``: the token itself (never shown by ``repr``);
    - ``token_type``: ``"Bearer"``, or ``"DPoP"`` for a DPoP-bound token (RFC 9449;
      normalised; the response's spelling is in ``raw``);
    - ``expires_at``: wall-clock expiry, timezone-aware UTC, for display and logs. The
      token manager decides freshness with a monotonic clock, not with this;
    - ``scope``: the granted scope (may differ from the requested one; when the server does
      not say, RFC 6749 section 5.1 means the requested scope was granted);
    - ``raw``: the token response without ``access_token``;
    - ``dpop_jkt``: for a DPoP token, the thumbprint of the proof key it is bound to (only
      the holder of that key can use it).

    Two tokens are equal when their values are (compared in constant time).
    """

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    scope: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    expires_in: float = field(default=0.0, repr=False)
    dpop_jkt: str | None = field(default=None, repr=False)

    @property
    def is_dpop(self) -> bool:
        """Whether this is a DPoP-bound token (each use needs a proof from its key)."""
        return self.token_type == DPOP

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scope as a set."""
        return frozenset((self.scope or "").split())

    def authorization_header(self) -> str:
        """``Bearer <token>``; ``DPoP <token>`` for a DPoP-bound token, which also needs a
        proof (``DPoP`` header) with every request: use ``tokens.auth()``."""
        return f"{self.token_type} {self.value}"

    def expires_within(self, seconds: float) -> bool:
        """Whether the wall-clock expiry is less than ``seconds`` away."""
        return utc_now() + timedelta(seconds=seconds) >= self.expires_at

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessToken):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self.value.encode(), other.value.encode())

    def __hash__(self) -> int:
        return hash(self.value)


MAX_LIFETIME = 366 * 24 * 3600  # longer than a year is a broken server or a forgery, not a token


def is_header_safe(value: str) -> bool:
    """Whether ``value`` can go into an ``Authorization`` header as it is: printable ASCII,
    no whitespace (so no CR/LF header injection)."""
    return bool(value) and value.isascii() and value.isprintable() and not any(c.isspace() for c in value)


def token_problem(token: AccessToken) -> str | None:
    """Why ``token`` must not be served, or ``None``: a value that is not header-safe, a
    type other than Bearer, a lifetime that is not a positive finite number of at most
    :data:`MAX_LIFETIME` seconds, or an expiry further away than that lifetime."""
    if not isinstance(token.value, str) or not is_header_safe(token.value):
        return "access token value is not safe in an HTTP header"
    if token.is_dpop:
        if not isinstance(token.dpop_jkt, str) or not token.dpop_jkt:
            return "DPoP token without the thumbprint of its proof key"
    elif not isinstance(token.token_type, str) or token.token_type.lower() != "bearer":
        return "token type is not Bearer or DPoP"
    elif token.dpop_jkt is not None:
        return "Bearer token with a DPoP key thumbprint"
    lifetime = token.expires_in
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        return "lifetime is not a number"
    if not math.isfinite(lifetime) or not 0 < lifetime <= MAX_LIFETIME:
        return "lifetime is not between 0 and a year"
    if not isinstance(token.expires_at, datetime) or token.expires_at.tzinfo is None:
        return "expiry is not a timezone-aware time"
    if token.scope is not None and not isinstance(token.scope, str):
        return "scope is not a string"
    return None
