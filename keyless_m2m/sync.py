"""A blocking facade over :class:`~keyless_m2m.TokenManager` for code without an event loop
(Django views, Celery tasks, scripts).

One event loop runs in a background thread (an anyio blocking portal) and owns the async
manager, so every thread shares one cache and one flight per entry. A fresh cached token
is read straight from the calling thread without touching the loop.
"""

from __future__ import annotations

import contextlib
import threading
from contextlib import AbstractContextManager
from functools import partial
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .bearer import BearerSource
from .errors import ManagerClosedError
from .manager import TokenManager, forked_error
from .source import ResourceArg, ScopeArg
from .stats import TokenStats
from .token import AccessToken

if TYPE_CHECKING:
    from .client_auth import ClientAuth

__all__ = ["SyncTokenManager"]


class SyncTokenManager(BearerSource):
    """Blocking, thread-safe token manager with the semantics of :class:`TokenManager`.

    >>> with SyncTokenManager(token_endpoint="https://auth.example/oauth2/token",
    ...                       client_auth=ClientSecretBasic("id", "secret")) as tokens:
    ...     token = tokens.get_token()

    Takes the same arguments as :class:`TokenManager`. ``close()`` stops the background
    thread; it is also called on ``with`` exit. ``backend`` picks the loop the thread runs
    (``"asyncio"`` or ``"trio"``).
    """

    def __init__(
        self,
        token_endpoint: str | None = None,
        client_auth: ClientAuth | None = None,
        *,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal(backend)
        self._portal = self._portal_cm.__enter__()
        try:
            self._manager: TokenManager = self._portal.call(
                partial(_create, token_endpoint, client_auth, options)
            )
            self._manager_cm = self._portal.wrap_async_context_manager(self._manager)
            self._manager_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    def __repr__(self) -> str:
        return f"Sync{self._manager!r}"

    @property
    def stats(self) -> TokenStats:
        return self._manager.stats

    @property
    def manager(self) -> TokenManager:
        """The async manager running on the background loop."""
        return self._manager

    def get_token(
        self, scope: ScopeArg = None, *, resource: ResourceArg = None, audience: str | None = None
    ) -> AccessToken:
        """A valid access token (blocks only when none is cached)."""
        entry = self._manager._peek(scope, resource, audience)
        if entry is not None:
            current = entry.current
            if monotonic() < current.refresh_at:
                return current.token
        self._check_usable()
        return self._portal.call(
            partial(self._manager.get_token, scope, resource=resource, audience=audience)
        )

    def dpop_proof(self, method: str, url: str, token: AccessToken) -> str | None:
        """:meth:`TokenManager.dpop_proof`, blocking (``None`` for a Bearer token)."""
        if not token.is_dpop:
            return None
        self._check_usable()
        return self._portal.call(self._manager.dpop_proof, method, url, token)

    def remember_dpop_nonce(self, url: str, nonce: str) -> bool:
        """:meth:`TokenManager.remember_dpop_nonce`."""
        self._check_usable()
        return self._portal.call(self._manager.remember_dpop_nonce, url, nonce)

    def invalidate(self, token: AccessToken) -> bool:
        if self._closed:
            return False
        self._check_usable()
        return self._portal.call(self._manager.invalidate, token)

    def _check_usable(self) -> None:
        if self._closed:
            raise ManagerClosedError("this SyncTokenManager is closed")
        if self._manager._forked:
            # The portal's thread and loop do not exist in a forked child: calling into them
            # would hang forever. Fail at once instead (see TokenManager._check_usable).
            raise forked_error("SyncTokenManager")

    def close(self) -> None:
        """Close the manager and stop the background thread. Idempotent. In a forked child
        it only marks the copy closed (the parent's thread is not there to stop)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._manager._forked:
            return
        try:
            self._manager_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten close() must not leave a thread behind at interpreter exit.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()


async def _create(
    token_endpoint: str | None, client_auth: ClientAuth | None, options: dict[str, Any]
) -> TokenManager:
    return TokenManager(token_endpoint, client_auth, **options)
