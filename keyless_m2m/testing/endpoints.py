"""``OfflineTokenEndpoint``: a token endpoint without HTTP, for tests and benchmarks of code
that uses a :class:`~keyless_m2m.TokenManager` (``TokenManager(endpoint=OfflineTokenEndpoint())``).

Every request is answered at once (or after ``delay`` seconds) with a fresh token for
exactly the scope, resources and audience asked for (``token.raw`` records the resources
and audience); ``calls`` counts the requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

import anyio

from ..client_auth import ClientSecretBasic
from ..endpoint import TokenEndpoint
from ..token import AccessToken, utc_now

__all__ = ["OfflineTokenEndpoint"]


class OfflineTokenEndpoint(TokenEndpoint):
    """See the module docstring. ``expires_in`` is the lifetime of every token."""

    def __init__(self, *, delay: float = 0.0, expires_in: float = 3600.0) -> None:
        super().__init__("https://auth.example/token", ClientSecretBasic("offline-client", "not-a-secret"))
        self.delay = delay
        self.expires_in = expires_in
        self.calls = 0

    async def request(
        self,
        *,
        scope: str | None = None,
        resource: Sequence[str] = (),
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
    ) -> AccessToken:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return AccessToken(
            value=f"offline-token-{self.calls}",
            token_type="Bearer",  # noqa: S106 - a token type, not a password
            expires_at=utc_now() + timedelta(seconds=self.expires_in),
            scope=scope,
            raw={"resource": list(resource), "audience": audience},
            expires_in=self.expires_in,
        )
