"""Cold start (issue 21): what the first fetch of a manager builds, and where.

Counts, never times: how many CA bundles are loaded (``SSLContext.load_verify_locations``,
which ``ssl.create_default_context(cafile=...)`` calls) and on which thread, how many HTTP
transports are built, which context a manager with a client certificate gets. Against real
loopback servers (HTTPS with a throwaway CA; mutual TLS), on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from keyless_m2m import (
    ClientSecretPost,
    ConfigurationError,
    PrivateKeyJWT,
    TlsClientAuth,
    TokenManager,
    TransportError,
    _http,
)
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.mtls_server import MutualTlsAuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner
from keyless_m2m.testing.tls import ClientFiles, TestAuthority
from tests.frame_locals import secret_locals

SECRET = "a-secret-for-the-cold-start-tests"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def server(authority: TestAuthority, billing: ClientFiles) -> Iterator[MutualTlsAuthorizationServer]:
    with MutualTlsAuthorizationServer(authority) as server:
        server.register_client("svc", client_secret=SECRET)
        server.register_tls_client("billing", subject_dn=billing.subject_dn)
        yield server


class Loads:
    """Every CA load and transport build of the process, with the thread it ran on."""

    def __init__(self) -> None:
        self.ca_threads: list[int] = []
        self.transports = 0
        self.contexts = 0


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Loads:
    # A process that has built nothing yet: no shared context (raising=False: the code
    # before issue 21 had no cache, and these tests must fail on it, not error).
    monkeypatch.setattr(_http, "_SHARED_CONTEXTS", {}, raising=False)
    seen = Loads()
    load = ssl.SSLContext.load_verify_locations
    new = ssl.SSLContext.__new__
    transport_init = httpx.AsyncHTTPTransport.__init__

    def recording_load(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        seen.ca_threads.append(threading.get_ident())
        load(self, *args, **kwargs)

    def recording_new(cls: Any, *args: Any, **kwargs: Any) -> Any:
        seen.contexts += 1
        return new(cls, *args, **kwargs)

    def recording_transport(self: httpx.AsyncHTTPTransport, *args: Any, **kwargs: Any) -> None:
        seen.transports += 1
        transport_init(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", recording_load)
    monkeypatch.setattr(ssl.SSLContext, "__new__", recording_new)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "__init__", recording_transport)
    return seen


async def test_n_managers_load_the_ca_bundle_once_and_never_on_the_loop(
    server: MutualTlsAuthorizationServer,
    authority: TestAuthority,
    loads: Loads,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", authority.ca_file)  # verify=True trusts it
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    loop_thread = threading.get_ident()
    managers = [
        TokenManager(server.token_endpoint, ClientSecretPost("svc", SECRET), scope=f"s{i}") for i in range(8)
    ]
    assert loads.ca_threads == [] and loads.contexts == 0  # construction builds nothing
    for manager in managers:
        async with manager:
            assert (await manager.get_token()).value
    assert len(loads.ca_threads) == 1  # 8 managers, one CA bundle loaded
    assert loads.contexts == 1  # and one SSLContext made (no plain one: no http request)
    assert loop_thread not in loads.ca_threads
    assert server.token_requests == 8


async def test_a_ca_file_and_the_system_store_are_loaded_off_the_loop_in_discovery(
    server: MutualTlsAuthorizationServer, authority: TestAuthority, loads: Loads
) -> None:
    loop_thread = threading.get_ident()
    from keyless_m2m.discovery import clear_metadata_cache, discover

    clear_metadata_cache()
    for _ in range(3):
        metadata = await discover(server.issuer, verify=authority.ca_file, max_age=0)
        assert metadata.token_endpoint == server.token_endpoint
    assert len(loads.ca_threads) == 1 and loop_thread not in loads.ca_threads


async def test_different_trust_configurations_never_share_a_context(
    server: MutualTlsAuthorizationServer, authority: TestAuthority, loads: Loads, tmp_path: Path
) -> None:
    copy = tmp_path / "ca-copy.pem"
    copy.write_bytes(Path(authority.ca_file).read_bytes())
    contexts = []
    for verify in (authority.ca_file, str(copy), False, authority.ca_file):
        async with TokenManager(
            server.token_endpoint, ClientSecretPost("svc", SECRET), verify=verify
        ) as tokens:
            await tokens.get_token()
            contexts.append(tokens.endpoint._http._transport._context)  # type: ignore[union-attr]
    assert contexts[0] is contexts[3]  # the same file: one context
    assert len({id(c) for c in contexts[:3]}) == 3  # another file, False: each its own
    assert contexts[2].verify_mode == ssl.CERT_NONE and contexts[0].verify_mode == ssl.CERT_REQUIRED


async def test_a_client_certificate_context_is_never_shared(
    server: MutualTlsAuthorizationServer, authority: TestAuthority, billing: ClientFiles, loads: Loads
) -> None:
    with_cert = TokenManager(
        server.token_endpoint,
        TlsClientAuth("billing", billing.certificate, billing.key),
        verify=authority.ca_file,
    )
    without = TokenManager(server.token_endpoint, ClientSecretPost("svc", SECRET), verify=authority.ca_file)
    async with with_cert, without:
        await with_cert.get_token()
        await without.get_token()
        mine = with_cert.endpoint._http._transport._context  # type: ignore[union-attr]
        theirs = without.endpoint._http._transport._context  # type: ignore[union-attr]
    assert mine is not theirs
    assert mine not in _http._SHARED_CONTEXTS.values() and theirs in _http._SHARED_CONTEXTS.values()
    # What the server saw: the certificate on the first manager's connection only.
    assert server.peer_thumbprints == [with_cert.endpoint.client_certificate.thumbprint, None]  # type: ignore[union-attr]
    # And the context the second one used would not present it to a server that insists.
    assert theirs.get_ca_certs() and mine is not with_cert.endpoint.verify


async def test_without_a_certificate_after_one_with_the_handshake_still_fails(
    authority: TestAuthority, billing: ClientFiles, loads: Loads
) -> None:
    with MutualTlsAuthorizationServer(authority, require_certificate=True) as strict:
        strict.register_client("svc", client_secret=SECRET)
        strict.register_tls_client("billing", subject_dn=billing.subject_dn)
        auth = TlsClientAuth("billing", billing.certificate, billing.key)
        async with TokenManager(strict.token_endpoint, auth, verify=authority.ca_file) as tokens:
            await tokens.get_token()
        async with TokenManager(
            strict.token_endpoint, ClientSecretPost("svc", SECRET), verify=authority.ca_file, max_attempts=1
        ) as plain:
            with pytest.raises(TransportError) as info:
                await plain.get_token()
    assert info.value.reason == "tls_client_certificate"


async def test_a_given_http_client_means_the_first_fetch_builds_nothing(
    server: MutualTlsAuthorizationServer, authority: TestAuthority, loads: Loads
) -> None:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=authority.ca_file)) as http:
        built = (len(loads.ca_threads), loads.contexts, loads.transports)
        async with TokenManager(
            server.token_endpoint, ClientSecretPost("svc", SECRET), http_client=http
        ) as tokens:
            await tokens.get_token()
    assert (len(loads.ca_threads), loads.contexts, loads.transports) == built  # nothing more


async def test_the_first_fetch_of_a_plain_http_endpoint_loads_no_ca_bundle(loads: Loads) -> None:
    with AuthorizationServer() as plain:
        plain.register_client("svc", client_secret=SECRET)
        managers = [TokenManager(plain.url + "/token", ClientSecretPost("svc", SECRET)) for _ in range(5)]
        for manager in managers:
            async with manager:
                await manager.get_token()
    assert loads.ca_threads == []  # http:// never needs one
    assert loads.contexts == 1  # the one inert context of the plain transports, for the process
    assert loads.transports == 5  # a pool per manager, never shared


def test_keyless_m2m_token_imports_no_sdk_and_no_unused_library(tmp_path: Path) -> None:
    """``keyless-m2m token`` against a loopback http endpoint, in a fresh process: the
    modules it imported, from ``sys.modules`` at exit."""
    with AuthorizationServer() as plain:
        plain.register_client("svc", client_secret=SECRET)
        # The real command (python -m keyless_m2m); a sitecustomize prints its modules at exit.
        (tmp_path / "sitecustomize.py").write_text(
            "import atexit, json, sys\n"
            "atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "KEYLESS_M2M_CLIENT_SECRET": SECRET,
        }
        for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
            env.pop(name, None)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "keyless_m2m",
                "token",
                "--token-endpoint",
                plain.url + "/token",
                "--client-id",
                "svc",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()  # the token
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "keyless_m2m.cli._token" in modules  # the probe saw the command run
    unused = {"boto3", "botocore", "google", "azure", "hvac", "redis", "pkcs11", "truststore", "jwt"}
    assert not unused & {name.split(".")[0] for name in modules}
    # The CLI runs on asyncio only: httpcore's probe for trio, and httpx's own command line
    # (rich, click), are skipped; certifi's bundle is never read for an http endpoint.
    assert not {"trio", "rich", "click", "pygments"} & {name.split(".")[0] for name in modules}
    # Each command's module is imported when it runs: not the others, nor what only they need.
    others = {
        f"keyless_m2m.cli._{c}" for c in ("demo", "doctor", "certificate", "jwks", "proof", "assertion")
    }
    assert not others & modules
    assert "keyless_m2m.certificates" not in modules and "cryptography.x509" not in modules


async def test_an_unloadable_default_ca_file_is_a_configuration_error_at_async_with(
    server: MutualTlsAuthorizationServer, loads: Loads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "bad.pem"))
    manager = TokenManager(server.token_endpoint, ClientSecretPost("svc", SECRET))  # nothing loaded yet
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE") as info:
        async with manager:
            pass
    assert SECRET not in str(info.value)
    endpoint = TokenEndpoint(server.token_endpoint, ClientSecretPost("svc", SECRET))
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE") as at_request:
        await endpoint.request()  # without async with: the request says it, as itself
    await endpoint.aclose()
    assert secret_locals(at_request.value, [SECRET]) == []  # no frame of it holds the secret
    assert server.token_requests == 0 and _http._SHARED_CONTEXTS == {}  # nothing half-built cached


# -- fleets: the first fetches of many managers take turns with the loop ----------------------


class _NotingSigner(InMemorySigner):
    """Notes each signature made, with the task that asked for it."""

    def __init__(self, log: list[tuple[str, int]]) -> None:
        super().__init__()
        self.log = log

    async def sign(self, signing_input: bytes) -> bytes:
        signature = await super().sign(signing_input)
        self.log.append(("signed", anyio.get_current_task().id))
        return signature


async def test_the_first_fetches_of_a_fleet_let_the_loop_run_between_signing_and_sending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 managers cold at once: each flight signs, then yields to the loop before its
    request goes to the transport. So the loop does not run twenty signings and twenty
    request starts in one pass (the stall a service sees when it starts with many
    scopes): every flight has signed before the first request is sent. The order of
    events within a pass differs between asyncio and trio; this holds on both."""
    log: list[tuple[str, int]] = []
    handle = httpx.AsyncHTTPTransport.handle_async_request

    async def noting(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        log.append(("sent", anyio.get_current_task().id))
        return await handle(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", noting)
    signer = _NotingSigner(log)
    with AuthorizationServer() as server:
        server.register_client("fleet", public_jwk=signer.public_jwk)
        auth = PrivateKeyJWT("fleet", signer)
        managers = [TokenManager(server.token_endpoint, auth, scope=f"s{i}") for i in range(20)]
        async with contextlib.AsyncExitStack() as stack:
            for manager in managers:
                await stack.enter_async_context(manager)
            async with anyio.create_task_group() as callers:
                for manager in managers:
                    for _ in range(5):
                        callers.start_soon(manager.get_token)
        assert server.token_requests == 20
    kinds = [kind for kind, _ in log]
    assert kinds.count("signed") == kinds.count("sent") == 20
    assert kinds == ["signed"] * 20 + ["sent"] * 20


class _CancellingSigner(InMemorySigner):
    """Signs, then cancels ``scope``: the cancellation lands at the first checkpoint after
    the signature, the one between making the credentials and sending them."""

    scope: anyio.CancelScope | None = None

    async def sign(self, signing_input: bytes) -> bytes:
        signature = await super().sign(signing_input)
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None
        return signature


async def test_a_caller_cancelled_between_signing_and_sending_sends_nothing_and_loses_nothing() -> None:
    """The yield before sending is a cancellation point: a caller cancelled there sends no
    request (none counted, none reaching the server), and the endpoint's next request,
    with a fresh assertion, is answered."""
    signer = _CancellingSigner()
    with AuthorizationServer() as server:
        server.register_client("fleet", public_jwk=signer.public_jwk)
        endpoint = TokenEndpoint(server.token_endpoint, PrivateKeyJWT("fleet", signer))
        try:
            with anyio.CancelScope() as scope:
                signer.scope = scope
                await endpoint.request(scope="s")
            assert scope.cancelled_caught
            assert (endpoint.stats.signatures, endpoint.stats.requests, server.token_requests) == (1, 0, 0)
            token = await endpoint.request(scope="s")
            assert token.value
            assert (endpoint.stats.signatures, endpoint.stats.requests, server.token_requests) == (2, 1, 1)
        finally:
            await endpoint.aclose()
