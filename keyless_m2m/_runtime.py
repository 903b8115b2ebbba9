"""Runtime vocabulary every layer may use: which async library is running, the lazy
import of an optional dependency that names its extra, and the conventions of keyword
arguments shared by signers and caches (``max_concurrency``, a renamed keyword's
deprecation). A leaf: imports only ``errors``."""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import TypeVar

from .errors import ConfigurationError, MissingExtraError

__all__ = ["check_max_concurrency", "import_extra", "renamed_keyword", "running_async_library"]

_T = TypeVar("_T")


def running_async_library() -> str | None:
    """``"trio"``, ``"asyncio"``, or ``None`` outside an event loop.

    Components whose dependency has an asyncio-only async client (grpc.aio, aiohttp,
    redis.asyncio) pick their client by this. It is what anyio does itself, without
    depending on ``sniffio`` (which recent anyio no longer installs).
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    import asyncio  # detection only; the library uses no asyncio primitive

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return "asyncio"


def import_extra(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra, module) from None


def check_max_concurrency(value: object) -> int:
    """``max_concurrency``, the one name of a bound on concurrent calls into a blocking
    client (a signer's SDK, the Redis cache's synchronous client): a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError("max_concurrency must be a positive integer")
    return value


def renamed_keyword(
    new: str, new_value: _T | None, old: str, old_value: _T | None, *, owner: str
) -> _T | None:
    """The value of a keyword argument that had another name: the new name's, or the old
    name's with a :class:`DeprecationWarning`; both at once is a ``ConfigurationError``."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigurationError(f"pass {new}= or {old}=, not both ({old}= is the deprecated name of {new}=)")
    warnings.warn(f"{owner}({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
    return old_value
