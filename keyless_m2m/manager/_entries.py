"""The manager's entry table: one entry per (scope set, resources, audience), bounded.

The default entry (the manager's own scope, resources and audience) lives outside the
table and never counts against ``max_entries``. The table evicts least recently used
first, whatever the entry's state, so the bound holds under any input; an evicted entry
is marked ``evicted`` and emptied, and whoever still holds it (a waiter, a lookup alias)
gets a fresh entry on its next call: eviction never leaves a key unusable.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, cast

from ..errors import ConfigurationError, KeylessM2MError
from ..source import ResourceArg, ScopeArg
from ..token import AccessToken

if TYPE_CHECKING:
    from ._flight import Flight

__all__ = ["EMPTY", "Current", "Entry", "EntryKey", "EntryTable", "normalize_scope"]

logger = logging.getLogger("keyless_m2m")

EntryKey = tuple[frozenset[str], tuple[str, ...], str | None]


class Current:
    """An entry's token with its deadlines on the monotonic clock, swapped as one object so
    a reader in another thread (SyncTokenManager's fast path) never sees a token with
    another's deadline. ``refresh_at``: when the refresh window opens; ``usable_until``:
    when the token stops being served."""

    __slots__ = ("refresh_at", "token", "usable_until")

    def __init__(self, token: AccessToken, refresh_at: float, usable_until: float) -> None:
        self.token = token
        self.refresh_at = refresh_at
        self.usable_until = usable_until

    def holds(self, token: AccessToken) -> bool:
        return self is not EMPTY and (self.token is token or self.token == token)


# No token: both deadlines in the past, so the hot path never returns its (absent) token.
EMPTY: Final = Current(cast(AccessToken, None), -math.inf, -math.inf)


class Entry:
    __slots__ = (
        "current",
        "error",
        "evicted",
        "failures",
        "flight",
        "invalidated_at",
        "key",
        "rejected",
        "retry_at",
        "scope",
        "shared_key",
    )

    def __init__(self, key: EntryKey) -> None:
        self.key = key
        self.scope = " ".join(sorted(key[0])) or None
        self.current: Current = EMPTY
        self.flight: Flight | None = None
        self.error: KeylessM2MError | None = None
        self.retry_at = -math.inf
        self.failures = 0
        # The shared cache's name for this entry (computed on first use) and the last
        # token invalidated here, which must not come back from the shared cache.
        self.shared_key: str | None = None
        self.rejected: AccessToken | None = None
        self.evicted = False
        self.invalidated_at = -math.inf  # monotonic time of the last invalidate() honoured

    def usable(self, now: float) -> AccessToken | None:
        """The token, while it may still be served."""
        current = self.current
        return current.token if now < current.usable_until else None


def normalize_scope(scope: ScopeArg) -> frozenset[str]:
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(scope.split())
    try:
        items = list(scope)
    except TypeError:
        raise ConfigurationError("scope must be a string or an iterable of strings") from None
    if not all(isinstance(s, str) for s in items):
        raise ConfigurationError("scope must be a string or an iterable of strings")
    return frozenset(w for s in items for w in s.split())


def normalize_resource(resource: ResourceArg) -> tuple[str, ...]:
    if resource is None:
        return ()
    if isinstance(resource, str):
        return (resource,)
    try:
        items = tuple(resource)
    except TypeError:
        raise ConfigurationError("resource must be a URI string or a sequence of them") from None
    if not all(isinstance(r, str) and r for r in items):
        raise ConfigurationError("resource must be a URI string or a sequence of them")
    return tuple(sorted(set(items)))


class EntryTable:
    """The default entry, at most ``max_entries`` others (LRU), and a lookup of the
    spellings callers used (``"a b"``, ``("b", "a")``) so the hot path normalises nothing."""

    def __init__(
        self, scope: ScopeArg, resource: ResourceArg, audience: str | None, *, max_entries: int
    ) -> None:
        self.max_entries = max_entries
        self.defaults: tuple[ScopeArg, ResourceArg, str | None] = (scope, resource, audience)
        self.entries: OrderedDict[EntryKey, Entry] = OrderedDict()
        self.lookup: dict[tuple[Any, Any, Any], Entry] = {}
        self.default = Entry(self.key(scope, resource, audience))
        self.evictions = 0
        self._warned = False

    def get(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> Entry:
        raw: tuple[Any, Any, Any] | None = (scope, resource, audience)
        try:
            entry = self.lookup.get(raw)  # type: ignore[arg-type]
        except TypeError:  # unhashable spelling (a list of scopes): normalise every time
            entry = None
            raw = None
        if entry is not None and not entry.evicted:
            if entry is not self.default:
                self.entries.move_to_end(entry.key)
            return entry
        entry = self._make(self.key(scope, resource, audience))
        if raw is not None:
            if len(self.lookup) >= 8 * self.max_entries:
                self.lookup.clear()  # aliases of evicted entries: bounded, then forgotten
            self.lookup[raw] = entry
        return entry

    def peek(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> Entry | None:
        """Look an entry up without changing anything (safe from another thread)."""
        if scope is None and resource is None and audience is None:
            return self.default
        try:
            return self.lookup.get((scope, resource, audience))
        except TypeError:
            return None

    def key(self, scope: ScopeArg, resource: ResourceArg, audience: str | None) -> EntryKey:
        default_scope, default_resource, default_audience = self.defaults
        if audience is not None and not isinstance(audience, str):
            raise ConfigurationError("audience must be a string")
        return (
            normalize_scope(default_scope if scope is None else scope),
            normalize_resource(default_resource if resource is None else resource),
            default_audience if audience is None else audience,
        )

    def all(self) -> list[Entry]:
        return [self.default, *self.entries.values()]

    def _make(self, key: EntryKey) -> Entry:
        if key == self.default.key:
            return self.default
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            return entry
        entry = Entry(key)
        self.entries[key] = entry
        while len(self.entries) > self.max_entries:
            # Least recently used first; never the entry just made (it is the newest). An
            # evicted entry's waiters still get their flight's token; the next call for its
            # key makes a new entry.
            _, evicted = self.entries.popitem(last=False)
            self._evict(evicted)
        return entry

    def _evict(self, entry: Entry) -> None:
        was_usable = entry.usable(monotonic()) is not None
        entry.evicted = True
        entry.current = EMPTY
        if not was_usable:
            return
        self.evictions += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "evicted a still-valid token to stay within max_entries=%d; more scope sets, "
                "resources or audiences are in use than the cache holds, so tokens are fetched "
                "again (raise max_entries; stats.evictions counts these)",
                self.max_entries,
            )
