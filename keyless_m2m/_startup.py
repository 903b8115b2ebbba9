"""What the ``keyless-m2m`` command's process skips at import (issue 21, cold start).

httpx imports its own command line when it is imported (``httpx._main``: rich, click and
pygments when they are installed, 100-300 ms of a cold start), which this command never
runs; httpcore imports trio, when it is installed, only to know whether it is (~100-200 ms),
and the command runs on asyncio. In the command's process only (its console script, or
``python -m keyless_m2m``), and only when httpx is not imported yet, httpcore and httpx
are imported with those skipped (``httpx.main`` is then httpx's stub; httpcore in that
process cannot run on trio, which the command never does). Any other process imports
them as they are.
Imported first by the package; only the standard library.
"""

from __future__ import annotations

import itertools
import os
import sys

__all__ = ["is_command_line"]


def is_command_line() -> bool:
    """Whether this process is the ``keyless-m2m`` command: its console script, or
    ``python -m keyless_m2m``."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name.removesuffix(".exe") == "keyless-m2m":
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b in ("keyless_m2m", "keyless_m2m.cli") for a, b in itertools.pairwise(argv))


def _import_httpx_for_the_command() -> None:
    skipped = ["httpx._main"]
    if "trio" not in sys.modules and "httpcore" not in sys.modules:
        skipped.append("trio")
    for name in skipped:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import httpcore  # noqa: F401
        import httpx  # noqa: F401
    finally:
        for name in skipped:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


if "httpx" not in sys.modules and is_command_line():
    _import_httpx_for_the_command()
