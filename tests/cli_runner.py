"""Run the ``keyless-m2m`` command as a user would: ``python -m keyless_m2m ARGS`` in a
subprocess (bounded by a timeout, killed by PID if it runs over), with a clean
``KEYLESS_M2M_*`` environment; the key files and environments the commands are given."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import make_key, pem_of

CLI_TIMEOUT = 60.0


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m keyless_m2m ARGS`` with a clean KEYLESS_M2M_* environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
    environ.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyless_m2m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=environ,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        pytest.fail(f"keyless-m2m {' '.join(args)} ran longer than {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli_inline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as :func:`cli` runs it, in this process: ``keyless_m2m.cli.run`` on
    asyncio with ``env`` as the only ``KEYLESS_M2M_*`` environment, stdout and stderr
    captured. The same code path as ``python -m keyless_m2m`` from argument parsing to the
    exit code, without a second of interpreter start each; for the suites that drive the
    command through dozens of cases, which keep a few :func:`cli` runs for the process
    boundary. Not thread-safe (it swaps ``sys.stdout``/``sys.stderr``): one at a time."""
    from keyless_m2m.cli import run

    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
    environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = anyio.run(run, list(args), environ)
    return subprocess.CompletedProcess(["keyless-m2m", *args], code, out.getvalue(), err.getvalue())


def one_line_error(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The one stderr line of a failed command, which names the typed error ``name``."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"keyless-m2m: {name}: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def key_uri(tmp_path: Path, kind: str = "p256") -> str:
    """A ``file://`` signer URI for the session's key of ``kind`` (see ``make_key``)."""
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(pem_of(make_key(kind)))
    return path.as_uri()


def jwk_of(kind: str, alg: str) -> dict[str, Any]:
    """The public JWK of the session's key of ``kind`` for ``alg``, as the signer describes it."""
    signer = LocalSigner.from_pem(pem_of(make_key(kind)), algorithm=alg)
    assert signer._description is not None
    return dict(signer._description.public_jwk)


def env_for(server: AuthorizationServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for client ``svc`` (the P-256 key) of the embedded ``server``."""
    return {
        "KEYLESS_M2M_TOKEN_ENDPOINT": server.token_endpoint,
        "KEYLESS_M2M_CLIENT_ID": "svc",
        "KEYLESS_M2M_SIGNER": key_uri(tmp_path, "p256"),
        "KEYLESS_M2M_SCOPE": "pockets.read",
        **extra,
    }


def op_env(issuer: str, tmp_path: Path, alg: str = "ES256", kind: str = "p256") -> dict[str, str]:
    """The environment for oidc-provider's ``jwt-<alg>`` client at ``issuer``."""
    return {
        "KEYLESS_M2M_ISSUER": issuer,
        "KEYLESS_M2M_CLIENT_ID": f"jwt-{alg.lower()}",
        "KEYLESS_M2M_SIGNER": key_uri(tmp_path, kind),
        "KEYLESS_M2M_SCOPE": "pockets.read",
    }
