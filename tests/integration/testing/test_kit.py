"""``keyless_m2m.testing`` as a user's test suite uses it: the in-memory signer with the
token manager and the embedded server, and the pytest plugin's fixtures.

The server's checks are exercised by an independent client in
``test_testing_kit_authlib.py``; here the focus is the pieces a user combines.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest

from keyless_m2m import ConfigurationError, InvalidClientError, PrivateKeyJWT, SigningError, TokenManager
from keyless_m2m._jose import jwk_thumbprint
from keyless_m2m.signers import Signer
from keyless_m2m.testing import ManualClock, pytest_plugin
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner

pytest_plugins = ["pytester"]

anyio_test = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]  # tests/integration/testing/ -> the repository


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as srv:
        yield srv


# -- InMemorySigner ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS384", "ES256", "ES384", "ES512", "EdDSA"])
@anyio_test
async def test_in_memory_signer_signs_what_its_jwk_verifies(
    alg: str, verifier: Callable[..., dict[str, Any]]
) -> None:
    signer = InMemorySigner(alg)
    assert isinstance(signer, Signer)
    jwk = signer.public_jwk
    assert jwk["alg"] == alg and jwk["use"] == "sig" and "d" not in jwk and "p" not in jwk
    assert jwk["kid"] == jwk_thumbprint(jwk)  # RFC 7638, as every backend
    assert signer.jwks == {"keys": [jwk]}
    assertion = await PrivateKeyJWT("svc", signer).assertion("https://auth.example/token")
    claims = verifier(assertion, jwk, audience="https://auth.example/token")
    assert claims["iss"] == "svc"
    assert (signer.sign_calls, signer.signatures) == (1, 1)
    await signer.aclose()
    assert signer.closed


def test_in_memory_signer_keys_are_fresh_and_hidden() -> None:
    one, two = InMemorySigner(), InMemorySigner(key_id="pinned")
    assert one.public_jwk["x"] != two.public_jwk["x"]
    assert two.description.key_id == "pinned" and two.public_jwk["kid"] == "pinned"
    assert repr(two) == "InMemorySigner(algorithm='ES256', key_id='pinned')"
    with pytest.raises(ConfigurationError, match="unsupported algorithm 'HS256'"):
        InMemorySigner("HS256")


@anyio_test
async def test_in_memory_signer_with_the_manager_and_server(
    server: AuthorizationServer, manual_clock: ManualClock
) -> None:
    signer = InMemorySigner("ES256", latency=0.05)
    server.register_client("svc", jwks=signer.jwks)
    async with TokenManager(server.token_endpoint, PrivateKeyJWT("svc", signer)) as tokens:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(tokens.get_token)
        assert signer.signatures == 1 and server.token_requests == 1  # slow signing, one flight

        signer.fail_next(SigningError("the KMS is throttling", retryable=False))
        first = await tokens.get_token()
        assert await tokens.invalidate(first)
        with pytest.raises(SigningError, match="throttling"):
            await tokens.get_token()
        assert server.token_requests == 1  # nothing was sent without a signature
        manual_clock.advance(1.1)  # past the failure backoff (jittered, at most 1 s)
        second = await tokens.get_token()
    assert second.value != first.value and second.value == server.issued[-1]
    assert (signer.sign_calls, signer.signatures) == (3, 2)


@anyio_test
async def test_a_stranger_signer_is_refused_with_the_reason(server: AuthorizationServer) -> None:
    registered, stranger = InMemorySigner(), InMemorySigner()
    server.register_client("svc", jwks=registered.jwks)
    async with TokenManager(server.token_endpoint, PrivateKeyJWT("svc", stranger)) as tokens:
        with pytest.raises(Exception, match="does not verify") as caught:
            await tokens.get_token()
    assert type(caught.value) is InvalidClientError
    assert server.refusals == [
        "invalid_client: the signature does not verify with client 'svc''s registered keys "
        f"(assertion kid {stranger.description.key_id!r}, registered kids {registered.description.key_id!r})"
    ]


# -- the pytest plugin ---------------------------------------------------------------------


def test_the_entry_point_names_the_plugin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entry_points = project["project"]["entry-points"]["pytest11"]
    assert entry_points == {"keyless_m2m": pytest_plugin.__name__}
    assert {"authorization_server", "in_memory_signer", "manual_clock"} <= set(pytest_plugin.__all__)


USER_TESTS = """
import pytest
from keyless_m2m import PrivateKeyJWT, TokenManager

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param

@pytest.mark.anyio
async def test_token(authorization_server, in_memory_signer):
    authorization_server.register_client("svc", jwks=in_memory_signer.jwks)
    async with TokenManager(authorization_server.token_endpoint, PrivateKeyJWT("svc", in_memory_signer)) as t:
        token = await t.get_token()
    assert token.value == authorization_server.issued[0]
    assert in_memory_signer.signatures == 1

@pytest.mark.anyio
async def test_expiry_without_sleeping(authorization_server, in_memory_signer, manual_clock):
    authorization_server.register_client("svc", jwks=in_memory_signer.jwks)
    async with TokenManager(authorization_server.token_endpoint, PrivateKeyJWT("svc", in_memory_signer)) as t:
        first = await t.get_token()
        manual_clock.advance(3600)
        assert await t.get_token() != first
    assert authorization_server.token_requests == 2

def test_fresh_server_per_test(authorization_server):
    assert authorization_server.clients == {} and authorization_server.token_requests == 0
    assert authorization_server.token_endpoint.startswith("http://127.0.0.1:")

SERVERS = []

def test_records_server(authorization_server):
    SERVERS.append(authorization_server)

def test_previous_server_is_stopped(authorization_server):
    import httpx
    with pytest.raises(httpx.ConnectError):
        httpx.get(SERVERS[0].issuer + "/.well-known/oauth-authorization-server", timeout=2)
"""


def plugin_args() -> list[str]:
    """Load the plugin as its entry point does when keyless-m2m is installed with it (an
    editable install made before the entry point existed does not have it yet)."""
    installed = any(ep.value == pytest_plugin.__name__ for ep in entry_points(group="pytest11"))
    return ["-q"] if installed else ["-q", "-p", pytest_plugin.__name__]


def test_plugin_fixtures_in_a_user_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=7)  # test_token and test_expiry_without_sleeping on asyncio and trio


def test_a_conftest_fixture_of_the_same_name_wins(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest

@pytest.fixture
def authorization_server():
    return "the user's own"
"""
    )
    pytester.makepyfile(
        test_user="""
def test_own(authorization_server, in_memory_signer):
    assert authorization_server == "the user's own"
    assert in_memory_signer.description.algorithm == "ES256"
"""
    )
    result = pytester.runpytest_subprocess(*plugin_args())
    result.assert_outcomes(passed=1)


def test_the_plugin_loads_the_kit_only_when_used(pytester: pytest.Pytester) -> None:
    # pytest imports every installed plugin at start-up, in every project: keep it light.
    kit = ("keyless_m2m.testing.authorization_server", "keyless_m2m.testing.signers")
    code = f"import sys, {pytest_plugin.__name__}; print([m for m in {kit!r} if m in sys.modules])"
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stderr.str()
    assert result.outlines[-1] == "[]"


@anyio_test
async def test_a_retryable_signing_error_is_retried_with_a_fresh_assertion(
    server: AuthorizationServer,
) -> None:
    # The example in docs/testing.md ("An in-memory signer").
    signer = InMemorySigner("PS256", latency=0.05)
    server.register_client("svc", jwks=signer.jwks)
    signer.fail_next(SigningError("KMS throttled", retryable=True))
    async with TokenManager(server.token_endpoint, PrivateKeyJWT("svc", signer), backoff=0.01) as tokens:
        token = await tokens.get_token()
    assert (signer.sign_calls, signer.signatures) == (2, 1)
    assert token.value == server.issued[0] and server.token_requests == 1
