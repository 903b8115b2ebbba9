"""A real ``moto_server`` process on loopback (AWS KMS without AWS) for the AWS KMS tests,
stopped by PID: :func:`running_moto_server` yields a :class:`MotoServer` once it answers.

``pip install 'moto[server]'`` provides it; with none installed the test is skipped (or
fails under ``CI``, see :func:`tests.helpers.missing_server`). The process gets no AWS_*
variables of the user's: clients bring their own (dummy) credentials and region.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import missing_server
from tests.processes import free_port, stop_process

STARTUP_TIMEOUT = 30.0


@dataclass
class MotoServer:
    endpoint: str
    port: int
    pid: int


def _moto_command() -> list[str] | None:
    exe = shutil.which("moto_server") or shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe:
        return [exe]
    if importlib.util.find_spec("moto") and importlib.util.find_spec("flask"):
        return [sys.executable, "-m", "moto.server"]
    return None


def _answers_http(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def running_moto_server(workdir: Path) -> Iterator[MotoServer]:
    command = _moto_command()
    if command is None:
        missing_server("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = workdir / "moto_server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers_http(port):
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"moto_server did not answer within {STARTUP_TIMEOUT:.0f} s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield MotoServer(f"http://127.0.0.1:{port}", port, proc.pid)
    finally:
        stop_process(proc)
    assert proc.poll() is not None


def dummy_aws_environment(mp: pytest.MonkeyPatch, directory: Path, region: str) -> None:
    """Dummy credentials and ``region`` for an AWS SDK against a local double, and no user
    AWS configuration (profiles, config and credential files, instance metadata)."""
    absent = directory / "absent"
    for var in ("AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"):
        mp.delenv(var, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_SESSION_TOKEN", "testing")
    mp.setenv("AWS_DEFAULT_REGION", region)
    mp.setenv("AWS_CONFIG_FILE", str(absent))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(absent))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
