"""The interop matrix (server configuration, method, algorithm, aud: result) as a
markdown table, from a run of ``tests/integration/test_oidc_provider_interop.py``.

The tests print nothing; with ``KEYLESS_M2M_INTEROP_MATRIX=FILE`` set, each case appends
one JSON line to ``FILE`` (:func:`record`). Then::

    python -m tests.oidc_provider.matrix                  # runs the interop tests, prints the table
    python -m tests.oidc_provider.matrix -- -n 2 -k fapi2 # extra pytest arguments after --
    python -m tests.oidc_provider.matrix FILE             # the table from an earlier run's FILE
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ENV = "KEYLESS_M2M_INTEROP_MATRIX"
ROOT = Path(__file__).resolve().parents[2]
TEST_MODULE = "tests/integration/test_oidc_provider_interop.py"
COLUMNS = ("configuration", "method", "algorithm", "aud", "result", "token requests (aud sent)", "expected")


def record(row: dict[str, Any]) -> None:
    """Append ``row`` to the file named by ``KEYLESS_M2M_INTEROP_MATRIX`` (nothing if unset).

    One ``write`` of one line in append mode: pytest-xdist workers can share the file.
    """
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps(row, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)


def _requests(sent: Sequence[str]) -> str:
    """``["issuer", "token_endpoint"]`` → ``issuer → token_endpoint``; ``-`` is a request
    without an assertion (a client secret)."""
    if not sent:
        return "none"
    if all(aud == "-" for aud in sent):
        return f"{len(sent)} (no assertion)"
    return " → ".join(sent)


def _cell(row: dict[str, Any], column: str) -> str:
    if column == "token requests (aud sent)":
        return _requests(row["sent"])
    if column == "expected":
        if (row["result"], row["sent"]) == (row["expected"], row["expected_sent"]):
            return "yes"
        return f"**no**: {row['expected']} after {_requests(row['expected_sent'])}"
    return str(row[column])


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per case in the test's order, the async backends that gave the
    same line merged."""
    merged: dict[tuple[str, ...], list[str]] = {}
    order: dict[tuple[str, ...], list[int]] = {}
    for row in rows:
        key = tuple(_cell(row, c) for c in COLUMNS)
        merged.setdefault(key, []).append(row["backend"])
        order.setdefault(key, row["order"])
    lines = [
        "| " + " | ".join((*COLUMNS, "backends")) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for key in sorted(merged, key=lambda k: order[k]):
        lines.append("| " + " | ".join((*key, ", ".join(sorted(merged[key])))) + " |")
    as_expected = sum(
        1 for row in rows if (row["result"], row["sent"]) == (row["expected"], row["expected_sent"])
    )
    lines.append("")
    lines.append(f"{len(rows)} cases, {as_expected} as expected")
    return "\n".join(lines)


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    extra: list[str] = []
    if "--" in args:
        extra = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    if args:
        print(table(read(args[0])))
        return 0
    fd, path = tempfile.mkstemp(prefix="interop-matrix-", suffix=".jsonl")
    os.close(fd)
    try:
        env = {**os.environ, ENV: path}
        cmd = [sys.executable, "-m", "pytest", TEST_MODULE, "-q", "-p", "no:cacheprovider", *extra]
        run = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
        print(table(read(path)))
        return run.returncode
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
