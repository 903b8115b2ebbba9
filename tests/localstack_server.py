"""A real LocalStack process on loopback (its own AWS KMS implementation, not moto's) for
the AWS KMS tests under ``--aws-double=localstack``, stopped by PID:
:func:`running_localstack` yields a :class:`LocalStackServer` once its health endpoint
says KMS is up.

LocalStack is not a dependency of the project: ``localstack-core[runtime]`` needs pins
that conflict with the project's (``cryptography<44``, ...) and Python 3.13, so it lives in
a virtualenv of its own whose interpreter ``KEYLESS_M2M_LOCALSTACK_PYTHON`` names
(``nox -s localstack`` builds it and sets the variable). It runs on the host, without
Docker, as ``python -m localstack.runtime.main``. Without the variable the LocalStack runs
are skipped (or fail under ``CI``, see :func:`tests.helpers.missing_server`); with it set, a
LocalStack that does not start fails the tests. Ordinary ``pytest`` runs use moto and
never ask for LocalStack.

Nothing is written outside ``workdir``: LocalStack's filesystem root, temporary files and
HOME are under it; it is told it is not in a container (otherwise it writes to
``/var/lib/localstack``), starts no DNS server, sends no analytics and downloads no TLS
certificate. The process gets no AWS_* variables of the user's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import missing_server
from tests.processes import free_port, stop_process

#: The interpreter of the virtualenv that has ``localstack-core[runtime]`` installed.
PYTHON_VARIABLE = "KEYLESS_M2M_LOCALSTACK_PYTHON"
STARTUP_TIMEOUT = 60.0
HEALTH_PATH = "/_localstack/health"


@dataclass
class LocalStackServer:
    endpoint: str
    port: int
    pid: int


def _kms_is_up(port: int) -> bool:
    """``GET /_localstack/health`` answers and lists KMS as available (or running)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", HEALTH_PATH)
        response = conn.getresponse()
        body = response.read()
    except OSError:
        return False
    finally:
        conn.close()
    if response.status != 200:
        return False
    try:
        state = json.loads(body).get("services", {}).get("kms")
    except (ValueError, AttributeError):
        return False
    return state in ("available", "running")


def _environment(workdir: Path, port: int) -> dict[str, str]:
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "LOCALSTACK_", "PYTHON")) and k not in ("VIRTUAL_ENV", "HOME")
    }
    env.update(
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        SERVICES="kms",
        HOME=str(workdir),
        TMPDIR=str(tmp),
        FILESYSTEM_ROOT=str(workdir / "filesystem"),
        OVERRIDE_IN_DOCKER="0",  # host mode: its directories under FILESYSTEM_ROOT
        DNS_ADDRESS="0",  # no DNS server of its own (it would bind port 53)
        DISABLE_EVENTS="1",  # no analytics
        SKIP_SSL_CERT_DOWNLOAD="1",  # plain HTTP on loopback; no certificate fetched
        PERSISTENCE="0",
    )
    return env


@contextlib.contextmanager
def running_localstack(workdir: Path) -> Iterator[LocalStackServer]:
    python = os.environ.get(PYTHON_VARIABLE, "")
    if not python:
        missing_server(
            f"{PYTHON_VARIABLE} is not set: the LocalStack runs belong to `nox -s localstack`, "
            "which builds LocalStack's own virtualenv and sets it"
        )
    # The variable is set: this run is meant to use LocalStack, so from here on a
    # LocalStack that does not start is a failure, in CI or not.
    if not Path(python).is_file():
        pytest.fail(f"{PYTHON_VARIABLE} names no file: {python}", pytrace=False)
    python = str(
        Path(python).absolute()
    )  # LocalStack runs in workdir; not resolve(): a venv's python is a symlink
    port = free_port()
    log = workdir / "localstack.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [python, "-m", "localstack.runtime.main"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=_environment(workdir, port),
            cwd=workdir,
            start_new_session=True,  # stopped as a group: any helper process it starts goes too
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _kms_is_up(port):
            if proc.poll() is not None:
                pytest.fail(f"LocalStack exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"LocalStack did not report KMS up within {STARTUP_TIMEOUT:.0f} s: "
                    f"{log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield LocalStackServer(f"http://127.0.0.1:{port}", port, proc.pid)
    finally:
        stop_process(proc, group=True, grace=10.0)
    assert proc.poll() is not None
