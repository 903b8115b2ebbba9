"""The test tree's own layout rule: a test module never imports another test module (a
``test_*.py``) nor a ``conftest.py``. What two test modules share lives in a named helper
module (``tests/helpers.py``, ``tests/aws_stubs.py``, ``tests/vault_server.py``, ...);
fixtures reach tests through pytest, never through an import.

The other directions (the library imports neither ``tests`` nor ``benchmarks``; tests never
import benchmarks) are import-linter contracts in ``pyproject.toml``: ``lint-imports``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "node_modules" not in p.parts)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(source: str, module: str) -> Iterator[str]:
    """Every module that ``source`` (the text of ``module``) imports, made absolute, with
    ``from M import n`` giving both ``M`` and ``M.n`` (``n`` may be a submodule)."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def is_test_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and any(p.startswith("test_") or p == "conftest" for p in parts)


def violations() -> set[tuple[str, str]]:
    found = set()
    for path in python_files():
        for module in imported_modules(path.read_text(), module_name(path)):
            if is_test_module(module):
                found.add((path.relative_to(ROOT).as_posix(), module))
    return found


def test_the_walk_sees_the_test_tree() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in python_files()}
    assert "tests/test_layout.py" in files and "tests/unit/signers/test_aws.py" in files
    assert len(files) > 50
    assert not any("node_modules" in f for f in files)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from tests.unit.signers import test_aws as t", True),
        ("from tests.integration.test_http_decompression import peak_growth", True),
        ("import tests.integration.signers.test_vault", True),
        ("from tests.integration.conftest import SECRET", True),
        ("from . import conftest", True),
        ("from .test_vault import running_server", True),
        ("from tests.helpers import make_key", False),
        ("from tests import aws_stubs", False),
        ("from tests.vault_server import running_server", False),
        ("import unittest.mock", False),
        ("from keyless_m2m.testing import contract", False),
    ],
)
def test_the_rule_tells_test_modules_from_helpers(source: str, expected: bool) -> None:
    modules = list(imported_modules(source, "tests.integration.signers.probe"))
    assert modules, source
    assert any(is_test_module(m) for m in modules) is expected, modules


def test_no_test_module_imports_another_test_module() -> None:
    found = sorted(violations())
    assert not found, "move what these share into a helper module:\n" + "\n".join(
        f"  {path} imports {module}" for path, module in found
    )
