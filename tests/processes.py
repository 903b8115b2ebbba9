"""The servers tests start: a free loopback port for one, and stopping it by PID
(SIGTERM, a bounded wait, then SIGKILL); a snippet of Python run in a fresh process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from typing import Any


def free_port() -> int:
    """A loopback TCP port nothing listens on (free when asked; a server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], *, group: bool = False, grace: float = 5.0) -> None:
    """Stop ``proc`` (its whole process group when ``group``, for servers started with
    ``start_new_session=True``) and reap it; a no-op if it has already exited."""
    if proc.poll() is not None:
        return
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def run_python(code: str, *, timeout: float = 60) -> str:
    """``python -c code`` in a fresh process (what a process may do once: set global
    providers, import or not import a module); asserts it succeeded, showing its stderr
    if not, and returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
