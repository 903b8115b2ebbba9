"""What is believed, and from whom (issue 15, points 3, 4, 8 and 9), over real loopback TLS.

- point 3: a URL with ``user:password@`` (token endpoint, issuer, ``discover()``, a metadata
  ``token_endpoint``) is refused, and the password never shows (str, repr, traceback, logs);
- point 4: metadata fetched under one trust setting (``verify=False``, another CA bundle, an
  ``http_client`` of yours, other proxy settings) is never adopted by a manager with another;
- point 8: metadata fetched over https never downgrades the token endpoint to http;
- point 9: what ``verify=True`` and ``verify="system"`` trust, as documented.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    DiscoveryError,
    KeylessM2MError,
    MissingExtraError,
    TokenManager,
    TransportError,
)
from keyless_m2m import discovery as discovery_module
from keyless_m2m.discovery import discover
from keyless_m2m.endpoint import TokenEndpoint, tls_verification
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.helpers import exception_texts, require_module
from tests.trust_servers import TlsAuthServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "trust-canary-secret-4be02a"
PASSWORD = "url-canary-password-77d3f1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    # (and a fresh discovery cache around every test: tests/conftest.py)


@pytest.fixture
def metadata_server(tmp_path: Path) -> Iterator[TlsAuthServer]:
    """A TLS server whose certificate no default trust store knows (its CA: ``ca_file``)."""
    with TlsAuthServer(str(tmp_path), label="metadata-ca") as server:
        yield server


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TlsAuthServer]:
    """Another TLS server, with a CA of its own: where hostile metadata sends the client."""
    with TlsAuthServer(str(tmp_path), label="token-ca") as server:
        yield server


def _texts(exc: BaseException, caplog: pytest.LogCaptureFixture) -> list[str]:
    return [*exception_texts(exc), *(r.getMessage() for r in caplog.records)]


# -- point 3: credentials in URLs -------------------------------------------------------------

URLS = [
    f"https://user:{PASSWORD}@auth.example/token",
    f"https://{PASSWORD}@auth.example/token",
    f"https://user:{PASSWORD}@auth.example:99999/token",  # also a bad port
    f"https://user:{PASSWORD}@[::1/token",  # also unparsable
    f"ftp://user:{PASSWORD}@auth.example/token",  # also the wrong scheme
    f"https:user:{PASSWORD}@auth.example/token",  # no authority at all
    f"https://user:pa/{PASSWORD}@auth.example/token",  # a "/" in the password
    f"http://user:{PASSWORD}@auth.example/token",  # also plain http
    f"https://user:{PASSWORD}@auth.example/token#x",
    f"https://user:{PASSWORD}@auth.example/token?q=1",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("where", ["token_endpoint", "from_issuer", "discover"])
async def test_credentials_in_a_url_are_refused_without_echo(
    url: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyless_m2m")
    auth = ClientSecretPost("c", SECRET)

    async def configure() -> None:
        if where == "token_endpoint":
            TokenManager(url, auth)
        elif where == "from_issuer":
            TokenManager.from_issuer(url.removesuffix("/token"), auth)
        else:
            await discover(url.removesuffix("/token"))

    with pytest.raises(ConfigurationError) as info:
        await configure()
    for text in _texts(info.value, caplog):
        assert PASSWORD not in text and "pa/" not in text


@pytest.mark.parametrize("url", [u for u in URLS if "auth.example/token" in u][:3])
async def test_credentials_in_a_metadata_token_endpoint_are_refused_without_echo(
    metadata_server: TlsAuthServer, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keyless_m2m")
    metadata_server.token_endpoint_override = url
    async with TokenManager.from_issuer(
        metadata_server.issuer, ClientSecretPost("c", SECRET), verify=metadata_server.ca_file, max_attempts=1
    ) as tokens:
        with pytest.raises(DiscoveryError) as info:
            await tokens.get_token()
        with pytest.raises(DiscoveryError) as direct:
            await discover(metadata_server.issuer, verify=metadata_server.ca_file, max_age=0)
    for error in (info.value, direct.value):
        assert "credentials" in str(error)
        for text in _texts(error, caplog):
            assert PASSWORD not in text
    assert metadata_server.token_requests == 0


# -- point 4: the metadata cache never crosses trust settings ----------------------------------


@pytest.mark.parametrize("first", ["verify_false", "other_ca_bundle", "own_http_client", "insecure_http"])
async def test_metadata_fetched_under_weaker_trust_is_not_adopted(
    metadata_server: TlsAuthServer,
    token_server: TlsAuthServer,
    first: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The default trust store of this test knows the token server's CA only: a strict
    # manager can post its credentials there, and must never learn that URL from metadata
    # it could not verify itself.
    monkeypatch.setenv("SSL_CERT_FILE", token_server.ca_file)
    metadata_server.token_endpoint_override = token_server.token_endpoint
    auth = ClientSecretPost("c", SECRET)
    options: dict[str, Any] = {"max_attempts": 1}
    http: httpx.AsyncClient | None = None
    if first == "verify_false":
        options["verify"] = False
    elif first == "other_ca_bundle":
        bundle = Path(metadata_server.ca_file).parent / "both.pem"
        bundle.write_text(Path(metadata_server.ca_file).read_text() + Path(token_server.ca_file).read_text())
        options["verify"] = str(bundle)
    elif first == "insecure_http":
        options["verify"] = False
        options["allow_insecure_http"] = True
    else:
        http = httpx.AsyncClient(verify=False)  # noqa: S501 - the weaker manager, on purpose
        options["http_client"] = http
    try:
        async with TokenManager.from_issuer(metadata_server.issuer, auth, **options) as weaker:
            await weaker.get_token()
    finally:
        if http is not None:
            await http.aclose()
    assert metadata_server.metadata_requests == 1 and token_server.token_requests == 1

    async with TokenManager.from_issuer(metadata_server.issuer, auth, max_attempts=1) as strict:
        with pytest.raises(TransportError) as info:
            await strict.get_token()
    # Before the fix: the strict manager took the cached metadata and got a token from
    # wherever it named (token_server.token_requests == 2).
    # Now: it fetched the metadata again, under its own trust, and refused the certificate
    # (so the server never saw that request).
    assert info.value.reason == "tls_verification"
    assert "metadata" in str(info.value)
    assert metadata_server.metadata_requests == 1
    assert token_server.token_requests == 1


async def test_the_cache_is_shared_where_trust_is_equal_and_keyed_by_proxy_settings(
    metadata_server: TlsAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = ClientSecretPost("c", SECRET)
    for _ in range(2):
        async with TokenManager.from_issuer(
            metadata_server.issuer, auth, verify=metadata_server.ca_file
        ) as t:
            await t.get_token()
    assert metadata_server.metadata_requests == 1  # same settings: one fetch
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # (loopback is not proxied anyway)
    async with TokenManager.from_issuer(metadata_server.issuer, auth, verify=metadata_server.ca_file) as t:
        await t.get_token()
    assert metadata_server.metadata_requests == 2  # other proxy settings: not shared


async def test_an_adopted_token_endpoint_is_checked_again(metadata_server: TlsAuthServer) -> None:
    auth = ClientSecretPost("c", SECRET)
    async with TokenManager.from_issuer(metadata_server.issuer, auth, verify=metadata_server.ca_file) as t:
        await t.get_token()
    # Whatever put it there, a cached entry naming a URL the current rules refuse is refused.
    cache: dict[Any, tuple[float, Any]] = discovery_module._CACHE
    assert len(cache) == 1
    for key, (until, metadata) in list(cache.items()):
        cache[key] = (until, dataclasses.replace(metadata, token_endpoint="http://attacker.example/token"))
    async with TokenManager.from_issuer(metadata_server.issuer, auth, verify=metadata_server.ca_file) as t:
        with pytest.raises(DiscoveryError, match="http"):
            await t.get_token()
    assert metadata_server.token_requests == 1


# -- point 8: no downgrade -----------------------------------------------------------------------


@pytest.mark.parametrize("allow_insecure_http", [False, True])
async def test_https_metadata_never_downgrades_the_token_endpoint(
    metadata_server: TlsAuthServer, allow_insecure_http: bool
) -> None:
    with AuthorizationServer() as plain:
        plain.register_client("c", client_secret=SECRET)
        metadata_server.token_endpoint_override = plain.token_endpoint  # http://127.0.0.1:…
        async with TokenManager.from_issuer(
            metadata_server.issuer,
            ClientSecretPost("c", SECRET),
            verify=metadata_server.ca_file,
            allow_insecure_http=allow_insecure_http,
            max_attempts=1,
        ) as tokens:
            with pytest.raises(DiscoveryError) as info:
                await tokens.get_token()
        # Before the fix: accepted, and the secret went in clear text to plain.
        assert plain.token_requests == 0
    assert "http://" in str(info.value) and "downgrade" in str(info.value)
    assert not info.value.retryable


async def test_http_metadata_of_a_loopback_issuer_may_name_http() -> None:
    with AuthorizationServer() as plain:
        plain.register_client("c", client_secret=SECRET)
        async with TokenManager.from_issuer(plain.issuer, ClientSecretPost("c", SECRET)) as tokens:
            await tokens.get_token()
        assert plain.token_requests == 1


# -- point 9: which CAs are trusted ----------------------------------------------------------------


def _certificates_in(path: str) -> int:
    return Path(path).read_text().count("-----BEGIN CERTIFICATE-----")


def test_verify_true_trusts_certifi_exactly_when_no_variable_is_set() -> None:
    import certifi

    from keyless_m2m._http import default_ssl_context

    context, name = default_ssl_context()
    assert name == ("certifi", certifi.where())
    assert len(context.get_ca_certs()) == _certificates_in(certifi.where())


async def test_ssl_cert_file_replaces_the_default_bundle(
    metadata_server: TlsAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = metadata_server.issuer + "/token"
    endpoint = TokenEndpoint(url, ClientSecretPost("c", SECRET), max_attempts=1)
    try:
        with pytest.raises(TransportError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    assert info.value.reason == "tls_verification"
    monkeypatch.setenv("SSL_CERT_FILE", metadata_server.ca_file)
    from keyless_m2m._http import default_ssl_context

    context, _ = default_ssl_context()
    assert len(context.get_ca_certs()) == 1  # replaces certifi: does not add to it
    endpoint = TokenEndpoint(url, ClientSecretPost("c", SECRET), max_attempts=1)
    try:
        assert (await endpoint.request()).value == "tls-token"
    finally:
        await endpoint.aclose()


def test_an_unloadable_ssl_cert_file_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bad.pem"))
    from keyless_m2m._http import default_ssl_context

    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        default_ssl_context()


def test_verify_system_builds_a_truststore_context() -> None:
    truststore = require_module("truststore", "the truststore extra is not installed")
    context = tls_verification("system")
    assert isinstance(context, truststore.SSLContext) and isinstance(context, ssl.SSLContext)
    endpoint = TokenEndpoint("https://auth.example/token", ClientSecretPost("c", SECRET), verify="system")
    assert isinstance(endpoint.verify, truststore.SSLContext)


def test_verify_system_without_truststore_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "truststore", None)
    with pytest.raises(MissingExtraError) as info:
        TokenManager("https://auth.example/token", ClientSecretPost("c", SECRET), verify="system")
    assert info.value.extra == "truststore" and "pip install 'keyless-m2m[truststore]'" in str(info.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenSSL's store: Linux and BSDs")
async def test_verify_system_on_linux_is_openssl_s_store_which_ssl_cert_file_overrides(
    metadata_server: TlsAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("truststore", "the truststore extra is not installed")
    url = metadata_server.issuer + "/token"
    for variable, trusted in ((None, False), ("SSL_CERT_FILE", True)):
        if variable:
            monkeypatch.setenv(variable, metadata_server.ca_file)
        endpoint = TokenEndpoint(url, ClientSecretPost("c", SECRET), verify="system", max_attempts=1)
        error: KeylessM2MError | None = None
        try:
            await endpoint.request()
        except TransportError as exc:
            error = exc
        finally:
            await endpoint.aclose()
        assert (error is None) is trusted, error
