"""Importing an integration as if its library were not installed."""

from __future__ import annotations

import importlib
import sys

import pytest

from keyless_m2m import MissingExtraError


def import_without(monkeypatch: pytest.MonkeyPatch, library: str, module: str) -> MissingExtraError:
    """The error of importing ``module`` when ``library`` (and its submodules) cannot be
    imported; ``sys.modules`` is restored after the test."""
    for name in [n for n in sys.modules if n == library or n.startswith(f"{library}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError) as info:
        importlib.import_module(module)
    return info.value
