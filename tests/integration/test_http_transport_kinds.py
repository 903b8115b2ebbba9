"""A transport error says what kind it is (``TransportError.reason`` and its message), over
real loopback sockets; a certificate that fails verification is never retried."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from keyless_m2m import ClientSecretBasic, TokenManager, TransportError
from keyless_m2m.discovery import DiscoveredTokenEndpoint, discover
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.testing.tls import loopback_tls
from tests.helpers import exception_texts
from tests.hostile_server import Answer, HostileServer
from tests.processes import free_port

pytestmark = pytest.mark.anyio
SECRET = "kinds-secret-77c1e0"
TOKEN = b'{"access_token": "kinds-token", "token_type": "Bearer", "expires_in": 300}'


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostileServer, Path]]:
    ca_file, context = loopback_tls(str(tmp_path_factory.mktemp("tls")))
    with HostileServer(ssl_context=context) as server:
        server.answers["/token"] = Answer(body=TOKEN, headers=[("content-type", "application/json")])
        yield server, Path(ca_file)


def auth() -> ClientSecretBasic:
    return ClientSecretBasic("kinds-client", SECRET)


def clean(error: BaseException) -> None:
    text = "\n".join(exception_texts(error))
    assert SECRET not in text and error.__cause__ is None


async def fails(endpoint: TokenEndpoint) -> TransportError:
    try:
        with anyio.fail_after(15), pytest.raises(TransportError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    clean(info.value)
    return info.value


async def test_a_refused_connection_says_so_and_is_retried() -> None:
    endpoint = TokenEndpoint(f"http://127.0.0.1:{free_port()}/token", auth(), max_attempts=2, backoff=0.01)
    error = await fails(endpoint)
    assert error.reason == "connection_refused" and error.retryable
    assert "connection refused" in str(error)
    assert endpoint.stats.requests == 2


async def test_a_name_that_does_not_resolve_says_so() -> None:
    endpoint = TokenEndpoint("https://nonexistent.invalid/token", auth(), max_attempts=1)
    error = await fails(endpoint)
    assert error.reason == "dns" and error.retryable
    assert "nonexistent.invalid" in str(error) and "not resolve" in str(error)


async def test_an_untrusted_certificate_is_named_and_never_retried(
    tls: tuple[HostileServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = tls
    before = server.connections
    caplog.set_level(logging.DEBUG, logger="keyless_m2m")
    endpoint = TokenEndpoint(server.url("/token"), auth(), max_attempts=4, backoff=0.01)
    error = await fails(endpoint)
    assert error.reason == "tls_verification" and not error.retryable
    assert "certificate verify failed: unable to get local issuer certificate" in str(error)
    assert endpoint.stats.requests == 1 and server.connections - before == 1
    assert "retry" not in caplog.text
    assert SECRET not in caplog.text


async def test_the_same_server_with_its_ca_trusted_answers(tls: tuple[HostileServer, Path]) -> None:
    server, ca_file = tls
    endpoint = TokenEndpoint(server.url("/token"), auth(), verify=ca_file, max_attempts=1)
    try:
        assert (await endpoint.request()).value == "kinds-token"
    finally:
        await endpoint.aclose()


async def test_through_the_manager_the_kind_is_kept(tls: tuple[HostileServer, Path]) -> None:
    server, _ = tls
    tokens = TokenManager(server.url("/token"), auth(), max_attempts=3, backoff=0.01)
    try:
        with anyio.fail_after(15), pytest.raises(TransportError) as info:
            await tokens.get_token()
    finally:
        await tokens.aclose()
    assert info.value.reason == "tls_verification" and tokens.stats.requests == 1


async def test_discovery_classifies_the_same_way(tls: tuple[HostileServer, Path]) -> None:
    server, _ = tls
    with anyio.fail_after(15):
        with pytest.raises(TransportError) as info:
            await discover(server.url(""), max_age=0)
        assert info.value.reason == "tls_verification" and not info.value.retryable
        assert "certificate verify failed" in str(info.value)
        clean(info.value)
        with pytest.raises(TransportError) as refused:
            await discover(f"http://127.0.0.1:{free_port()}", max_age=0)
        assert refused.value.reason == "connection_refused"
        endpoint = DiscoveredTokenEndpoint("https://nonexistent.invalid", auth(), metadata_max_age=0)
        error = await fails(endpoint)
        assert error.reason == "dns" and endpoint.stats.requests == 0
