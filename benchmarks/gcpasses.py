"""The cyclic garbage collector in the cold-start benchmarks: its full passes timed, and
the ``gc.freeze()`` that docs/token-manager.md recommends for a service that starts many
managers. A leaf: imports nothing heavy, so a worker that imports it stays cold."""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["FullPasses", "freeze_after_imports"]


def freeze_after_imports() -> None:
    """One collection, then ``gc.freeze()``: what the startup code of a service does once
    everything is imported and built, before its managers start."""
    gc.collect()
    gc.freeze()


class FullPasses:
    """The longest full (generation 2) collection within ``start()`` .. ``stop()``."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._began = 0.0
        self._on = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if not self._on or info["generation"] != 2:
            return
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._began)

    def start(self) -> None:
        self._on = True
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        self._on = False
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
