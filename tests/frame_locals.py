"""What an error tracker would record from an exception: the local variables of every
frame of its traceback, and of the traceback of every exception in its chain.

Sentry (and others) record each frame's ``f_locals``, walking into lists, tuples, dicts
and showing any other object by its ``repr``. :func:`secret_locals` does the same, plus
one level into an arbitrary object's attributes (``vars`` or ``__slots__``) and into
dataclass fields, and reports every place a forbidden value (``str`` or ``bytes``) shows.
Frames of the test modules themselves are skipped: they hold the canaries as test data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

__all__ = ["chain_of", "frames_of", "secret_locals"]

_TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep
_CONTAINERS = (list, tuple, set, frozenset)


def chain_of(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts (both), and the members of exception groups, once each."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def frames_of(exc: BaseException) -> Iterator[FrameType]:
    """Every frame of every traceback in the chain of ``exc`` (the test's own skipped)."""
    seen: set[int] = set()
    for current in chain_of(exc):
        tb = current.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if id(frame) not in seen and not frame.f_code.co_filename.startswith(_TESTS):
                seen.add(id(frame))
                yield frame
            tb = tb.tb_next


def _needles(forbidden: Iterable[str | bytes]) -> list[tuple[str, bytes]]:
    out = []
    for value in forbidden:
        if isinstance(value, bytes):
            out.append((value.decode("latin-1"), value))
        else:
            out.append((value, value.encode("utf-8")))
    return out


class _Walker:
    def __init__(self, forbidden: Iterable[str | bytes]) -> None:
        self.needles = _needles(forbidden)
        self.found: list[str] = []
        self._seen: set[int] = set()

    def check_text(self, text: str | bytes, where: str) -> None:
        for as_str, as_bytes in self.needles:
            if (as_bytes in text) if isinstance(text, bytes) else (as_str in text):
                self.found.append(f"{where}: {as_str[:12]}...")

    def walk(self, value: Any, where: str, *, depth: int = 0, objects: int = 0) -> None:
        if depth > 8 or id(value) in self._seen:
            return
        if isinstance(value, str | bytes):
            self.check_text(value, where)
            return
        if isinstance(value, bytearray | memoryview):
            self.check_text(bytes(value), where)
            return
        if value is None or isinstance(value, int | float | bool | type):
            return
        self._seen.add(id(value))
        try:
            shown = repr(value)  # what an error tracker shows of any object
        except Exception:
            shown = ""
        self.check_text(shown, f"{where} (repr)")
        if isinstance(value, Mapping):
            for key, item in list(value.items()):
                self.walk(key, f"{where}[key]", depth=depth + 1, objects=objects)
                self.walk(item, f"{where}[{key!r:.20}]", depth=depth + 1, objects=objects)
            return
        if isinstance(value, _CONTAINERS):
            for index, item in enumerate(list(value)):
                self.walk(item, f"{where}[{index}]", depth=depth + 1, objects=objects)
            return
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                self.walk(getattr(value, f.name, None), f"{where}.{f.name}", depth=depth + 1, objects=objects)
            return
        if objects >= 1:
            return  # one level into arbitrary objects' state, no deeper
        for name, item in _attributes(value):
            self.walk(item, f"{where}.{name}", depth=depth + 1, objects=objects + 1)


def _attributes(value: Any) -> list[tuple[str, Any]]:
    found: dict[str, Any] = {}
    with contextlib.suppress(TypeError):  # no __dict__
        found.update(vars(value))
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if isinstance(name, str) and name not in found and name not in ("__dict__", "__weakref__"):
                with contextlib.suppress(AttributeError):  # an unset slot
                    found[name] = object.__getattribute__(value, name)
    return list(found.items())


def secret_locals(exc: BaseException, forbidden: Iterable[str | bytes]) -> list[str]:
    """``"function:variable path: value..."`` for each forbidden value in the frames of ``exc``."""
    walker = _Walker(forbidden)
    for frame in frames_of(exc):
        for name, value in list(frame.f_locals.items()):
            walker.walk(value, f"{frame.f_code.co_name}:{name}")
    return walker.found
