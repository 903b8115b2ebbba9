"""Stopping the servers tests start: by PID, SIGTERM, a bounded wait, then SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


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
