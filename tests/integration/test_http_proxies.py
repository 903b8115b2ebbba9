"""Proxies (issue 15, point 5), over real loopback sockets and a real recording proxy.

The policy (docs/security.md, "Proxies"): credentials never travel in clear text to anyone
but the loopback endpoint, so a plain ``http://`` request never goes through a proxy,
whatever the variables say; ``https://`` requests go through ``HTTPS_PROXY`` (else
``ALL_PROXY``) as a CONNECT tunnel, TLS end to end, unless ``NO_PROXY`` names the host or
the host is loopback; the proxy in use is logged once at INFO as ``host:port``; a SOCKS
proxy without ``socksio`` is a :class:`~keyless_m2m.MissingExtraError` naming the extra.
Every variable is set with ``monkeypatch.setenv``, so nothing leaks to other tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    KeylessM2MError,
    MissingExtraError,
    SigningError,
    TokenManager,
    TransportError,
)
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import exception_texts
from tests.loopback_proxy import LoopbackProxy
from tests.trust_servers import TlsAuthServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "proxy-canary-secret-9d41e7"
PROXY_PASSWORD = "proxy-canary-password-31c5"
NAME = "auth.proxy.test"  # reserved (RFC 6761): only the test proxy resolves it
VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


async def request_tokens(tls_server: TlsAuthServer, *, times: int = 1, **options: Any) -> None:
    """``times`` token requests through one ``TokenEndpoint`` to ``tls_server``, closed after."""
    endpoint = TokenEndpoint(
        tls_server.token_endpoint, ClientSecretPost("c", SECRET), verify=tls_server.ca_file, **options
    )
    try:
        for _ in range(times):
            await endpoint.request()
    finally:
        await endpoint.aclose()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    # (and a fresh discovery cache around every test: tests/conftest.py)


@pytest.fixture
def proxy() -> Iterator[LoopbackProxy]:
    with LoopbackProxy(aliases=(NAME,)) as running:
        yield running


@pytest.fixture
def plain_server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as server:
        server.register_client("c", client_secret=SECRET)
        yield server


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsAuthServer]:
    with TlsAuthServer(str(tmp_path), host=NAME) as server:
        yield server


def _proxy_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "through the proxy" in r.getMessage()]


def _all_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# -- plain http: never through a proxy ---------------------------------------------------------


@pytest.mark.parametrize(
    "variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"]
)
async def test_a_plain_http_loopback_endpoint_never_goes_through_a_proxy(
    plain_server: AuthorizationServer, proxy: LoopbackProxy, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    async with TokenManager(plain_server.token_endpoint, ClientSecretPost("c", SECRET)) as tokens:
        token = await tokens.get_token()
    assert token.value and plain_server.token_requests == 1
    # Before the fix: HTTP_PROXY and ALL_PROXY got "POST http://127.0.0.1:…/token" with the
    # client secret in its body, in clear text.
    assert proxy.request_lines == []
    assert SECRET.encode() not in proxy.received


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
async def test_plain_http_with_allow_insecure_http_is_never_proxied(
    plain_server: AuthorizationServer, proxy: LoopbackProxy, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A non-loopback http:// endpoint (allow_insecure_http) that only the proxy can reach:
    # the request goes direct (and fails: the name does not resolve here), never to the proxy.
    monkeypatch.setenv(variable, proxy.url)
    url = f"http://{NAME}:{plain_server.token_endpoint.rsplit(':', 1)[1]}"
    endpoint = TokenEndpoint(url, ClientSecretPost("c", SECRET), allow_insecure_http=True, max_attempts=1)
    try:
        with pytest.raises(TransportError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    assert info.value.reason in ("dns", "network", "connection_refused")
    assert proxy.request_lines == [] and plain_server.token_requests == 0
    assert SECRET.encode() not in proxy.received
    assert all(SECRET not in text for text in exception_texts(info.value))


# -- https: a CONNECT tunnel, TLS end to end, logged once ---------------------------------------


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
async def test_https_goes_through_the_proxy_as_a_tunnel_and_is_logged_once(
    tls_server: TlsAuthServer,
    proxy: LoopbackProxy,
    variable: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(variable, f"http://puser:{PROXY_PASSWORD}@{proxy.address}")
    caplog.set_level(logging.DEBUG, logger="keyless_m2m")
    await request_tokens(tls_server, times=3)
    assert tls_server.token_requests == 3
    assert proxy.request_lines and all(
        line == f"CONNECT {NAME}:{tls_server.port} HTTP/1.1" for line in proxy.request_lines
    )
    assert SECRET.encode() not in proxy.received  # only TLS records went through it
    logged = _proxy_logs(caplog)
    assert len(logged) == 1, logged
    assert proxy.address in logged[0] and variable in logged[0] and NAME in logged[0]
    assert PROXY_PASSWORD not in _all_logs(caplog) and "puser" not in _all_logs(caplog)


async def test_discovery_and_the_token_request_share_the_tunnel_rule(
    tls_server: TlsAuthServer, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with TokenManager.from_issuer(
        tls_server.issuer, ClientSecretPost("c", SECRET), verify=tls_server.ca_file
    ) as tokens:
        await tokens.get_token()
    assert tls_server.metadata_requests == 1 and tls_server.token_requests == 1
    assert proxy.request_lines and all(line.startswith(f"CONNECT {NAME}:") for line in proxy.request_lines)
    assert SECRET.encode() not in proxy.received


@pytest.mark.parametrize("variable", ["NO_PROXY", "no_proxy"])
@pytest.mark.parametrize("entry", [NAME, ".proxy.test", "proxy.test", "*.proxy.test", "*", f"{NAME}:PORT"])
async def test_no_proxy_sends_the_request_direct(
    tls_server: TlsAuthServer,
    proxy: LoopbackProxy,
    variable: str,
    entry: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv(variable, f"other.example, {entry.replace('PORT', str(tls_server.port))}")
    with pytest.raises(TransportError):  # direct: the name resolves nowhere but at the proxy
        await request_tokens(tls_server, max_attempts=1)
    assert proxy.request_lines == [] and tls_server.token_requests == 0


async def test_no_proxy_for_another_port_keeps_the_proxy(
    tls_server: TlsAuthServer, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", f"{NAME}:{tls_server.port + 1}")
    await request_tokens(tls_server)
    assert len(proxy.request_lines) == 1 and tls_server.token_requests == 1


async def test_the_lower_case_variable_wins(
    tls_server: TlsAuthServer, proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # refused, if it were used
    monkeypatch.setenv("https_proxy", proxy.url)
    await request_tokens(tls_server)
    assert len(proxy.request_lines) == 1 and tls_server.token_requests == 1


async def test_https_to_a_loopback_host_never_goes_through_a_proxy(
    proxy: LoopbackProxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A proxy elsewhere would reach its own loopback, not this machine's (Go's rule too).
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with TlsAuthServer(str(tmp_path)) as server:
        endpoint = TokenEndpoint(server.token_endpoint, ClientSecretPost("c", SECRET), verify=server.ca_file)
        try:
            await endpoint.request()
        finally:
            await endpoint.aclose()
        assert server.token_requests == 1
    assert proxy.request_lines == []


# -- SOCKS without socksio, unusable proxy values ---------------------------------------------


@pytest.mark.parametrize("variable", ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"])
@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_a_socks_proxy_without_socksio_names_the_extra(
    variable: str, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "socksio", None)  # absent, whatever is installed
    monkeypatch.setenv(variable, f"{scheme}://puser:{PROXY_PASSWORD}@127.0.0.1:1")
    error: KeylessM2MError | None = None
    try:
        async with TokenManager("https://auth.example/token", ClientSecretPost("c", SECRET)) as tokens:
            await tokens.get_token()
    except KeylessM2MError as exc:
        error = exc
    assert error is not None
    assert not isinstance(error, SigningError)
    assert isinstance(error, MissingExtraError), repr(error)
    assert "pip install 'httpx[socks]'" in str(error) and variable in str(error)
    assert all(PROXY_PASSWORD not in text for text in exception_texts(error))


@pytest.mark.parametrize(
    "value", [f"ftp://u:{PROXY_PASSWORD}@127.0.0.1:21", f"http://u:{PROXY_PASSWORD}@[::1"]
)
async def test_an_unusable_proxy_value_is_refused_without_echo(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigurationError) as info:
        async with TokenManager("https://auth.example/token", ClientSecretPost("c", SECRET)) as tokens:
            await tokens.get_token()
    assert "HTTPS_PROXY" in str(info.value)
    assert all(PROXY_PASSWORD not in text for text in exception_texts(info.value))
