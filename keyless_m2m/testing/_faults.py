"""The one fault API every test double shares: ``fail_next(*faults)`` and ``clear_faults()``.

A fault is a plain object that says what goes wrong and for how many requests (its
``count``: ``1`` by default, ``None`` until :meth:`FaultInjection.clear_faults`). Each double
names the fault types it accepts (the authorization server's ``Fault``, the fake Key
Vault's ``KeyVaultFault``, the fake Cloud KMS's ``RpcFault`` and ``CorruptResponse``, an
exception for the in-memory signer) and asks the queue for the first pending fault that
applies to the request in hand. Doubles serve requests from their own threads, so the queue
takes a lock of its own.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["FaultInjection", "FaultQueue", "warn_deprecated"]

F = TypeVar("F")


def _count_of(fault: object) -> int | None:
    count = getattr(fault, "count", 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"a fault's count must be a positive integer or None (until cleared), not {count!r}")
    return count


class FaultQueue(Generic[F]):
    """Pending faults in the order they were added, each with the requests it has left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[list[Any]] = []  # [fault, remaining or None]

    def add(self, *faults: F) -> None:
        entries = [[fault, _count_of(fault)] for fault in faults]  # validate all before adding any
        with self._lock:
            self._pending.extend(entries)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def take(self, applies: Callable[[F], bool] = lambda fault: True) -> F | None:
        """The first pending fault that ``applies`` to this request, one use of it spent."""
        with self._lock:
            for index, entry in enumerate(self._pending):
                fault: F = entry[0]
                if not applies(fault):
                    continue
                if entry[1] is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._pending[index]
                return fault
        return None

    def pending(self) -> list[F]:
        """The faults not yet used up, oldest first (a snapshot)."""
        with self._lock:
            return [entry[0] for entry in self._pending]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __iter__(self) -> Iterator[F]:
        return iter(self.pending())


class FaultInjection:
    """Mixin: ``fail_next(*faults)`` and ``clear_faults()`` over ``self._faults``.

    ``fault_types`` are the classes ``fail_next`` accepts; anything else is a ``TypeError``
    naming them, so a fault meant for another double fails loudly instead of never firing.
    """

    fault_types: ClassVar[tuple[type, ...]] = ()
    _faults: FaultQueue[Any]

    def fail_next(self, *faults: Any) -> None:
        """Queue ``faults``: each applies to the next ``fault.count`` requests it matches."""
        for fault in faults:
            if not isinstance(fault, self.fault_types):
                names = " or ".join(t.__name__ for t in self.fault_types)
                raise TypeError(f"{type(self).__name__}.fail_next() takes {names} objects, not {fault!r}")
        self._faults.add(*faults)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        self._faults.clear()


def warn_deprecated(old: str, new: str) -> None:
    """A ``DeprecationWarning`` pointing at the caller of the deprecated spelling."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
