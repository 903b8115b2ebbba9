"""The integrations import their library when imported, and only then: without it, the
error names the extra to install; ``import keyless_m2m`` never loads grpc or mcp."""

from __future__ import annotations

import importlib
import sys

import pytest

from keyless_m2m import MissingExtraError
from tests.processes import run_python


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [
        ("keyless_m2m.integrations.grpc", "grpc", "grpc"),
        ("keyless_m2m.integrations.mcp", "mcp", "mcp"),
        ("keyless_m2m.integrations.opentelemetry", "opentelemetry", "opentelemetry"),
    ],
)
def test_a_missing_library_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, library: str, extra: str
) -> None:
    for name in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: "import fails" to the import system
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(MissingExtraError, match=rf"pip install 'keyless-m2m\[{extra}\]'") as missing:
        importlib.import_module(module)
    assert missing.value.extra == extra and isinstance(missing.value, ImportError)
    assert missing.value.__cause__ is None


def test_the_library_does_not_import_them() -> None:
    code = (
        "import sys, keyless_m2m, keyless_m2m.integrations, keyless_m2m.integrations.httpx; "
        "assert 'grpc' not in sys.modules and 'mcp' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('grpc', 'mcp')]"
    )
    run_python(code)
