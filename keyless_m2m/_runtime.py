"""Runtime vocabulary every layer may use: which async library is running, and the lazy
import of an optional dependency that names its extra. A leaf: imports only ``errors``."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["import_extra", "running_async_library"]


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
