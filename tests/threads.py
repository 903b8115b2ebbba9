"""Many threads at once: the concurrency tests of the blocking integrations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["at_once"]

T = TypeVar("T")


def at_once(
    call: Callable[[int], T], count: int, *, timeout: float = 30.0
) -> tuple[list[T], list[BaseException]]:
    """``call(0)`` ... ``call(count - 1)``, each in a thread of its own, released together by a
    barrier; the results (in the order they came) and the errors. Bounded: every wait
    has a timeout."""
    results: list[T] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def one(n: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            results.append(call(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results, errors
