"""Transport security of the token endpoint, over real loopback sockets.

- plain ``http://`` is refused for any host but loopback unless ``allow_insecure_http``;
- TLS certificates are verified by default; ``verify=`` takes a CA bundle path, a CA
  directory or an ``ssl.SSLContext``;
- redirects (302, 307, 308) are never followed, even with an ``http_client`` that follows
  redirects elsewhere: the credentials are never posted to the ``Location``.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    InvalidTokenResponseError,
    TokenManager,
    TransportError,
)
from keyless_m2m.endpoint import TokenEndpoint, tls_verification
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from keyless_m2m.testing.tls import loopback_tls

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "transport-secret-5f3a9c"


# -- a loopback HTTPS token endpoint with its own throwaway CA --------------------------------


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"access_token":"tls-token","token_type":"Bearer","expires_in":300}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def https_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca_file, context = loopback_tls(str(tmp_path_factory.mktemp("tls")))
    ca_path = Path(ca_file)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/token", ca_path
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


async def test_tls_is_verified_by_default(https_endpoint: tuple[str, Path]) -> None:
    url, _ = https_endpoint
    endpoint = TokenEndpoint(url, ClientSecretPost("c", SECRET), max_attempts=1)
    try:
        with pytest.raises(TransportError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    # the handshake failed: unknown CA (named since issue 14, point 3; it used to read "ConnectError")
    assert info.value.reason == "tls_verification" and not info.value.retryable
    assert "certificate verify failed" in str(info.value)
    assert SECRET not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize("form", ["str", "path", "directory", "context"])
async def test_custom_ca(https_endpoint: tuple[str, Path], form: str, tmp_path: Path) -> None:
    url, ca_path = https_endpoint
    verify: Any
    if form == "str":
        verify = str(ca_path)
    elif form == "path":
        verify = ca_path
    elif form == "directory":
        # OpenSSL finds a CA in a directory by its subject-name hash: <hash>.0
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is needed to name a CA directory entry")
        out = subprocess.run(
            [openssl, "x509", "-hash", "-noout", "-in", str(ca_path)],
            capture_output=True,
            check=True,
            timeout=10,
        )
        (tmp_path / f"{out.stdout.decode().strip()}.0").write_bytes(ca_path.read_bytes())
        verify = tmp_path
    else:
        verify = ssl.create_default_context(cafile=str(ca_path))
    async with TokenManager(url, ClientSecretPost("c", SECRET), verify=verify, max_attempts=1) as tokens:
        token = await tokens.get_token()
    assert token.value == "tls-token"
    assert isinstance(tokens.endpoint.verify, ssl.SSLContext)


def test_bad_verify_values_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot load CA certificates from 'missing\.pem'"):
        tls_verification(tmp_path / "missing.pem")
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"garbage\.pem"):
        tls_verification(str(tmp_path / "garbage.pem"))
    with pytest.raises(ConfigurationError, match="verify must be"):
        tls_verification(42)
    assert tls_verification(True) is True and tls_verification(False) is False


def test_plain_http_is_refused_except_loopback_unless_opted_out() -> None:
    auth = ClientSecretPost("c", SECRET)
    for url in ("http://auth.example/token", "http://10.0.0.8/token", "http://127.0.0.1.example/t"):
        with pytest.raises(ConfigurationError, match="allow_insecure_http=True"):
            TokenManager(url, auth)
    for url in ("http://127.0.0.1:1/token", "http://localhost:1/token", "http://[::1]:1/token"):
        TokenManager(url, auth)
    assert TokenManager("http://auth.example/token", auth, allow_insecure_http=True).token_endpoint


# -- redirects -----------------------------------------------------------------------------------


@pytest.fixture
def servers() -> Iterator[tuple[AuthorizationServer, AuthorizationServer]]:
    """(the configured server, the server a redirect points to)."""
    with AuthorizationServer() as configured, AuthorizationServer() as elsewhere:
        for server in (configured, elsewhere):
            server.register_client("c", client_secret=SECRET)
        yield configured, elsewhere


@pytest.mark.parametrize("status", [302, 307, 308])
@pytest.mark.parametrize("client", ["own", "following"])
async def test_redirects_are_not_followed(
    servers: tuple[AuthorizationServer, AuthorizationServer], status: int, client: str
) -> None:
    configured, elsewhere = servers
    configured.fail_next(Fault(status=status, headers={"Location": elsewhere.token_endpoint}, count=None))
    options: dict[str, Any] = {"max_attempts": 3, "backoff": 0.0}
    http = httpx.AsyncClient(follow_redirects=True) if client == "following" else None
    if http is not None:
        options["http_client"] = http
    endpoint = TokenEndpoint(configured.token_endpoint, ClientSecretPost("c", SECRET), **options)
    try:
        with pytest.raises(InvalidTokenResponseError, match="redirect") as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
        if http is not None:
            await http.aclose()
    assert info.value.status_code == status and not info.value.retryable
    assert configured.token_requests == 1  # not retried either
    assert elsewhere.token_requests == 0  # the credentials never went there
