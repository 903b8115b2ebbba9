"""The token-source protocols: what an integration (httpx, requests, gRPC, ...) needs from
whatever hands out tokens. Integrations depend on these, never on the manager classes, so
every arrow points down: ``integrations -> source <- manager``.

:class:`~keyless_m2m.TokenManager` is a :class:`TokenSource`,
:class:`~keyless_m2m.SyncTokenManager` a :class:`SyncTokenSource`; a test double or a
source of your own (a token from a file, a vault) only needs the two methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from .token import AccessToken

__all__ = ["ResourceArg", "ScopeArg", "SyncTokenSource", "TokenSource"]

ScopeArg = str | Iterable[str] | None
ResourceArg = str | Sequence[str] | None


@runtime_checkable
class TokenSource(Protocol):
    """Hands out access tokens to async code."""

    async def get_token(
        self, scope: ScopeArg = None, *, resource: ResourceArg = None, audience: str | None = None
    ) -> AccessToken:
        """A valid token for ``scope`` (and ``resource``/``audience``)."""
        ...

    async def invalidate(self, token: AccessToken) -> bool:
        """The API refused ``token``: do not hand it out again. Whether it was dropped."""
        ...


@runtime_checkable
class SyncTokenSource(Protocol):
    """Hands out access tokens to blocking code."""

    def get_token(
        self, scope: ScopeArg = None, *, resource: ResourceArg = None, audience: str | None = None
    ) -> AccessToken:
        """A valid token for ``scope`` (and ``resource``/``audience``)."""
        ...

    def invalidate(self, token: AccessToken) -> bool:
        """The API refused ``token``: do not hand it out again. Whether it was dropped."""
        ...
