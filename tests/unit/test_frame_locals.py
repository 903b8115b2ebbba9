"""Frame locals of raised exceptions: what Sentry records by default.

For every error path a token request or a key load can take (refusal, connection
refused, TLS failure, timeout, malformed response, wrong PEM password, malformed PEM, a
signer that fails, a bad constructor argument next to a good secret), walk the frames of
the raised exception's traceback and of every exception in its chain, and assert that no
local holds the client secret (raw, form-encoded, as the Basic credential), a client
assertion or its signature, a PEM body line or a PEM password, as ``str`` or ``bytes``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest

from keyless_m2m import (
    ClientSecretBasic,
    ClientSecretPost,
    KeylessM2MError,
    PrivateKeyJWT,
    SigningError,
    TokenManager,
)
from keyless_m2m._jose import b64url
from keyless_m2m.client_auth import ClientAuth
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.errors import (
    ConfigurationError,
    InvalidClientError,
    InvalidTokenResponseError,
    TransportError,
)
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from keyless_m2m.testing.signers import InMemorySigner
from tests.frame_locals import frames_of, secret_locals
from tests.helpers import make_key, pem_of

pytestmark = pytest.mark.anyio

CANARY = "frame-canary/secret+" + secrets.token_hex(12)
PASSWORD = b"frame-canary-pem-password-" + secrets.token_hex(6).encode()
METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


class World:
    """A server that records every assertion it receives, a signer it trusts."""

    def __init__(self) -> None:
        self.server = AuthorizationServer()
        self.signer = InMemorySigner("ES256")
        self.server.register_client("svc", jwks=self.signer.jwks)
        self.server.register_client("secret-client", client_secret="the-right-secret-" + "x" * 8)
        self.assertions: list[str] = []

        def on_request(form: dict[str, list[str]]) -> None:
            self.assertions += form.get("client_assertion", [])

        self.server.on_request = on_request

    def auth(self, method: str, signer: Any = None) -> ClientAuth:
        if method == "client_secret_basic":
            return ClientSecretBasic("secret-client", CANARY)
        if method == "client_secret_post":
            return ClientSecretPost("secret-client", CANARY)
        return PrivateKeyJWT("svc", _Recording(signer or self.signer, self.assertions))

    def forbidden(self) -> list[str | bytes]:
        basic = base64.b64encode(f"secret-client:{quote_plus(CANARY)}".encode()).decode()
        values: list[str | bytes] = [CANARY, CANARY.encode(), quote_plus(CANARY), basic, PASSWORD]
        for assertion in self.assertions:
            values += [assertion, assertion.rsplit(".", 1)[1]]
        return values


class _Recording:
    """A signer that records every assertion it completes, whether it is sent or not."""

    def __init__(self, inner: Any, assertions: list[str]) -> None:
        self.inner, self.assertions = inner, assertions

    async def describe(self) -> Any:
        return await self.inner.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        signature: bytes = await self.inner.sign(signing_input)
        self.assertions.append(f"{signing_input.decode()}.{b64url(signature)}")
        return signature

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    world.server.start()
    try:
        yield world
    finally:
        world.server.stop()


def assert_clean(exc: BaseException, forbidden: list[str | bytes]) -> None:
    assert list(frames_of(exc)), "the exception has library frames to inspect"
    found = secret_locals(exc, forbidden)
    assert not found, "secret material in frame locals:\n" + "\n".join(found)


async def _fails(endpoint: TokenEndpoint) -> KeylessM2MError:
    try:
        with pytest.raises(KeylessM2MError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    return info.value


@pytest.mark.parametrize("method", METHODS)
async def test_refusal(world: World, method: str) -> None:
    signer = InMemorySigner("ES256") if method == "private_key_jwt" else None  # an unregistered key
    error = await _fails(TokenEndpoint(world.server.token_endpoint, world.auth(method, signer)))
    assert type(error) is InvalidClientError
    assert_clean(error, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_refusal_through_the_manager(world: World, method: str) -> None:
    signer = InMemorySigner("ES256") if method == "private_key_jwt" else None
    async with TokenManager(world.server.token_endpoint, world.auth(method, signer)) as tokens:
        with pytest.raises(KeylessM2MError) as info:
            await tokens.get_token()
    assert_clean(info.value, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_connection_refused(world: World, method: str) -> None:
    unused = AuthorizationServer()
    url = unused.token_endpoint
    unused.stop()  # never started: nothing listens on its port
    error = await _fails(TokenEndpoint(url, world.auth(method), max_attempts=1))
    assert isinstance(error, TransportError) and error.reason == "connection_refused"
    assert_clean(error, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_tls_failure(world: World, method: str) -> None:
    url = world.server.token_endpoint.replace("http://", "https://")  # TLS to a plain HTTP port
    error = await _fails(TokenEndpoint(url, world.auth(method), max_attempts=1))
    assert isinstance(error, TransportError) and error.reason in ("tls", "protocol", "connection_reset")
    assert_clean(error, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_timeout(world: World, method: str) -> None:
    world.server.fail_next(Fault(status=None, delay=30.0))  # ended by server.stop()
    error = await _fails(
        TokenEndpoint(world.server.token_endpoint, world.auth(method), timeout=0.2, max_attempts=1)
    )
    assert isinstance(error, TransportError) and error.reason == "timeout"
    assert_clean(error, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_deadline(world: World, method: str) -> None:
    world.server.fail_next(Fault(status=None, delay=30.0))
    endpoint = TokenEndpoint(world.server.token_endpoint, world.auth(method), deadline=0.2)
    error = await _fails(endpoint)
    assert isinstance(error, TransportError) and error.reason == "deadline"
    assert_clean(error, world.forbidden())


@pytest.mark.parametrize("method", METHODS)
async def test_malformed_response(world: World, method: str) -> None:
    world.server.fail_next(Fault(200, "not json", {"Content-Type": "application/json"}))
    error = await _fails(TokenEndpoint(world.server.token_endpoint, world.auth(method)))
    assert isinstance(error, InvalidTokenResponseError)
    assert_clean(error, world.forbidden())


async def test_signer_that_fails_after_a_sent_assertion(world: World) -> None:
    """The first assertion went out (503), the second signature fails."""
    world.server.fail_next(Fault(503))
    signer = InMemorySigner("ES256")
    world.server.register_client("svc2", jwks=signer.jwks)
    auth = PrivateKeyJWT("svc2", signer)
    original = signer.sign
    calls = 0

    async def sign(signing_input: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SigningError("the HSM is unplugged")
        return await original(signing_input)

    signer.sign = sign  # type: ignore[method-assign]
    error = await _fails(TokenEndpoint(world.server.token_endpoint, auth, backoff=0, max_attempts=3))
    assert isinstance(error, SigningError)
    assert calls == 2
    assert world.assertions, "the first assertion reached the server"
    assert_clean(error, world.forbidden())


async def test_secret_next_to_a_bad_client_id() -> None:
    for cls in (ClientSecretBasic, ClientSecretPost):
        with pytest.raises(ConfigurationError) as info:
            cls("", CANARY)
        assert_clean(info.value, [CANARY])


# -- keys -----------------------------------------------------------------------------------


def _pem_lines(pem: bytes) -> list[str | bytes]:
    lines = [line for line in pem.splitlines()[1:-1] if len(line) >= 16]
    return [*lines, *(line.decode() for line in lines)]


def _key_error(call: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        call()
    return info.value


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_wrong_pem_password(as_text: bool) -> None:
    pem = pem_of(make_key("p256"), password=PASSWORD)
    data: Any = pem.decode() if as_text else pem
    password: Any = ("wrong-" + PASSWORD.decode()) if as_text else b"wrong-" + PASSWORD
    forbidden = [*_pem_lines(pem), PASSWORD, password]
    assert_clean(_key_error(lambda: LocalSigner.from_pem(data, password)), forbidden)
    assert_clean(_key_error(lambda: LocalSigner.from_pem(data, None)), forbidden)


def test_password_for_an_unencrypted_pem() -> None:
    pem = pem_of(make_key("p256"))
    forbidden = [*_pem_lines(pem), PASSWORD]
    assert_clean(_key_error(lambda: LocalSigner.from_pem(pem, PASSWORD)), forbidden)


def test_malformed_pem(tmp_path: Path) -> None:
    pem = pem_of(make_key("p256"))
    lines = pem.splitlines()
    lines[2] = lines[2][::-1]
    broken = b"\n".join(lines) + b"\n"
    forbidden = _pem_lines(broken) + _pem_lines(pem)
    assert_clean(_key_error(lambda: LocalSigner.from_pem(broken)), forbidden)
    path = tmp_path / "broken.pem"
    path.write_bytes(broken)
    assert_clean(_key_error(lambda: LocalSigner.from_pem_file(path)), forbidden)


def test_wrong_password_from_a_file(tmp_path: Path) -> None:
    pem = pem_of(make_key("p256"), password=PASSWORD)
    path = tmp_path / "locked.pem"
    path.write_bytes(pem)
    forbidden = [*_pem_lines(pem), PASSWORD, b"nope-" + PASSWORD]
    assert_clean(_key_error(lambda: LocalSigner.from_pem_file(path, password=b"nope-" + PASSWORD)), forbidden)
    assert_clean(
        _key_error(lambda: LocalSigner.from_uri(path.as_uri(), password=b"nope-" + PASSWORD)), forbidden
    )


def test_key_that_does_not_fit_the_algorithm(tmp_path: Path) -> None:
    """Parsed fine, refused after: the PEM and the password must be gone by then."""
    pem = pem_of(make_key("p256"), password=PASSWORD)
    forbidden = [*_pem_lines(pem), PASSWORD]
    assert_clean(_key_error(lambda: LocalSigner.from_pem(pem, PASSWORD, algorithm="RS256")), forbidden)
    path = tmp_path / "locked.pem"
    path.write_bytes(pem)
    assert_clean(_key_error(lambda: LocalSigner.from_pem_file(path, PASSWORD, algorithm="RS256")), forbidden)
