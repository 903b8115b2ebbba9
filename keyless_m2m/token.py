"""The access token a token endpoint issued."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass(frozen=True, slots=True, eq=False)
class AccessToken:
    """An access token and what the authorization server said about it.

    - ``value``: the token itself (never shown by ``repr``);
    - ``token_type``: ``"Bearer"`` (normalised; the response's spelling is in ``raw``);
    - ``expires_at``: wall-clock expiry, timezone-aware UTC, for display and logs. The
      token manager decides freshness with a monotonic clock, not with this;
    - ``scope``: the granted scope (may differ from the requested one; when the server does
      not say, RFC 6749 section 5.1 means the requested scope was granted);
    - ``raw``: the token response without ``access_token``.

    Two tokens are equal when their values are (compared in constant time).
    """

    value: str = field(repr=False)
    token_type: str
    expires_at: datetime
    scope: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    expires_in: float = field(default=0.0, repr=False)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scope as a set."""
        return frozenset((self.scope or "").split())

    def authorization_header(self) -> str:
        return f"Bearer {self.value}"

    def expires_within(self, seconds: float) -> bool:
        """Whether the wall-clock expiry is less than ``seconds`` away."""
        return datetime.now(UTC) + timedelta(seconds=seconds) >= self.expires_at

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessToken):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self.value.encode(), other.value.encode())

    def __hash__(self) -> int:
        return hash(self.value)
