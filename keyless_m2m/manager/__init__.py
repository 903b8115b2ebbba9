"""The token manager (:class:`TokenManager`): a thin public class over one room per concern.

- :mod:`._entries`: the bounded entry table (scope sets, resources, audiences);
- :mod:`._flight`: one fetch shared by all its waiters;
- :mod:`._timing`: refresh window, expiry leeway, failure backoff;
- :mod:`._shared`: the shared tier over a :class:`~keyless_m2m.cache.TokenCache`;
- :mod:`._core`: the class itself: hot path, flights, lifecycle.
"""

from __future__ import annotations

from ..source import ResourceArg, ScopeArg
from ..stats import TokenStats
from ._core import MANAGER_OPTIONS, TokenManager, forked_error
from ._entries import EntryKey, normalize_scope

__all__ = [
    "MANAGER_OPTIONS",
    "EntryKey",
    "ResourceArg",
    "ScopeArg",
    "TokenManager",
    "TokenStats",
    "forked_error",
    "normalize_scope",
]
