"""What the ``keyless-m2m`` command's process skips at import (issue 21, cold start).

httpx imports its own command line when it is imported (``httpx._main``: rich, click and
pygments when they are installed, 100-300 ms of a cold start), which this command never
runs. In the command's process only (its console script, or ``python -m keyless_m2m``),
and only when httpx is not imported yet, httpx is imported with that module skipped
(``httpx.main`` is then httpx's stub). Any other process imports httpx as it is.
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


def _import_httpx_without_its_command_line() -> None:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        if sys.modules.get("httpx._main", 0) is None:
            del sys.modules["httpx._main"]


if "httpx" not in sys.modules and is_command_line():
    _import_httpx_without_its_command_line()
