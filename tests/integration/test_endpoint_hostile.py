"""A deadline is a bound: a token endpoint (or metadata document) that trickles its
headers or body a byte at a time, a signer that hangs, and Retry-After pauses all end
within ``deadline`` plus a small constant, with a ``TransportError(reason="deadline")``
that names the deadline and the step that was running.

httpx's ``timeout`` resets on every byte read, so it alone never bounds a trickle; each
test wraps the call in ``anyio.fail_after(deadline + 2)``: a bound, not a timing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from keyless_m2m import ClientSecretPost, InvalidTokenResponseError, TokenManager, TransportError
from keyless_m2m.client_auth import PreparedAuth
from keyless_m2m.discovery import DiscoveredTokenEndpoint, discover
from keyless_m2m.endpoint import TokenEndpoint
from tests.hostile_server import Answer, HostileServer

pytestmark = pytest.mark.anyio
SECRET = "hostile-secret-0e5d21"
TOKEN = b'{"access_token": "hostile-token", "token_type": "Bearer", "expires_in": 300}'
JSON = [("content-type", "application/json")]
DEADLINE = 1.5
SLACK = 2.0


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as hostile:
        yield hostile


def metadata(server: HostileServer) -> bytes:
    return json.dumps({"issuer": server.url(""), "token_endpoint": server.url("/token")}).encode()


def endpoint(server: HostileServer, **options: object) -> TokenEndpoint:
    return TokenEndpoint(server.url("/token"), ClientSecretPost("hostile", SECRET), **options)  # type: ignore[arg-type]


async def deadline_error(endpoint: TokenEndpoint, deadline: float = DEADLINE) -> TransportError:
    try:
        with anyio.fail_after(deadline + SLACK), pytest.raises(TransportError) as info:
            await endpoint.request()
    finally:
        await endpoint.aclose()
    error = info.value
    assert error.reason == "deadline" and error.retryable
    assert f"deadline={deadline:g}s" in str(error) and SECRET not in str(error)
    return error


async def test_headers_trickled_a_byte_at_a_time_end_at_the_deadline(server: HostileServer) -> None:
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, trickle_head=0.5)
    error = await deadline_error(endpoint(server, timeout=10, deadline=DEADLINE))
    assert "response headers" in str(error)
    assert len(server.requests) == 1  # the one attempt used the whole deadline


async def test_a_body_trickled_a_byte_at_a_time_ends_at_the_deadline(server: HostileServer) -> None:
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, content_length=200, trickle_body=0.5)
    error = await deadline_error(endpoint(server, timeout=10, deadline=DEADLINE))
    assert "response body" in str(error)


async def test_a_trickle_costs_one_timeout_per_attempt_then_the_deadline(server: HostileServer) -> None:
    """``timeout`` bounds each attempt's exchange as a whole, so a trickle is retried."""
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, content_length=200, trickle_body=0.2)
    ep = endpoint(server, timeout=0.6, deadline=3.0, max_attempts=10, backoff=0.05)
    try:
        with anyio.fail_after(3.0 + SLACK), pytest.raises(TransportError) as info:
            await ep.request()
    finally:
        await ep.aclose()
    # the deadline cut the last attempt short, or the stop rule saw no time for another
    assert info.value.reason in ("deadline", "timeout")
    assert ep.stats.requests >= 3 and len(server.requests) <= ep.stats.requests


async def test_an_attempt_timeout_is_a_timeout_when_attempts_run_out(server: HostileServer) -> None:
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, trickle_head=0.2)
    ep = endpoint(server, timeout=0.5, deadline=10, max_attempts=2, backoff=0.05)
    try:
        with anyio.fail_after(0.5 * 2 + SLACK), pytest.raises(TransportError) as info:
            await ep.request()
    finally:
        await ep.aclose()
    assert info.value.reason == "timeout" and "timeout=0.5s" in str(info.value)
    assert ep.stats.requests == 2


async def test_a_hanging_signer_ends_at_the_deadline(server: HostileServer) -> None:
    class HangingAuth:
        client_id = "hostile"
        method = "private_key_jwt"

        async def prepare(self, token_endpoint: str) -> PreparedAuth:
            await anyio.sleep(3600)
            raise AssertionError("unreachable")

    server.answers["/token"] = Answer(body=TOKEN, headers=JSON)
    ep = TokenEndpoint(server.url("/token"), HangingAuth(), deadline=DEADLINE)
    error = await deadline_error(ep)
    assert "client authentication" in str(error) and server.requests == []


async def test_retry_after_pauses_stay_inside_the_deadline(server: HostileServer) -> None:
    server.answers["/token"] = Answer(status=503, headers=[("retry-after", "1")])
    ep = endpoint(server, deadline=2.5, max_attempts=100)
    try:
        with anyio.fail_after(2.5 + SLACK), pytest.raises(InvalidTokenResponseError) as info:
            await ep.request()
    finally:
        await ep.aclose()
    assert info.value.retryable and info.value.status_code == 503
    assert 2 <= ep.stats.requests <= 3  # 1 s pauses: never a pause past the deadline


async def test_slow_metadata_ends_at_the_deadline(server: HostileServer) -> None:
    server.answers["/.well-known/oauth-authorization-server"] = Answer(
        body=metadata(server), headers=JSON, trickle_body=0.5
    )
    ep = DiscoveredTokenEndpoint(
        server.url(""), ClientSecretPost("hostile", SECRET), deadline=DEADLINE, metadata_max_age=0
    )
    error = await deadline_error(ep)
    assert "metadata" in str(error) and ep.stats.requests == 0
    with anyio.fail_after(DEADLINE + SLACK), pytest.raises(TransportError) as info:
        await discover(server.url(""), deadline=DEADLINE, max_age=0)
    assert info.value.reason == "deadline" and "metadata" in str(info.value)


async def test_discovery_and_the_token_request_share_one_deadline(server: HostileServer) -> None:
    """Metadata that takes most of the deadline leaves the token request only the rest."""
    deadline = 3.0
    server.answers["/.well-known/oauth-authorization-server"] = Answer(
        body=metadata(server), headers=JSON, delay=deadline - 0.5
    )
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, trickle_head=0.5)
    ep = DiscoveredTokenEndpoint(
        server.url(""), ClientSecretPost("hostile", SECRET), deadline=deadline, metadata_max_age=0
    )
    error = await deadline_error(ep, deadline)
    assert ep.metadata is not None and ep.stats.requests == 1
    assert "response headers" in str(error)


async def test_through_the_manager_a_trickle_ends_at_the_deadline(server: HostileServer) -> None:
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON, trickle_head=0.5)
    tokens = TokenManager(server.url("/token"), ClientSecretPost("hostile", SECRET), deadline=DEADLINE)
    try:
        with anyio.fail_after(DEADLINE + SLACK), pytest.raises(TransportError) as info:
            await tokens.get_token()
    finally:
        await tokens.aclose()
    assert info.value.reason == "deadline"


async def test_a_well_behaved_server_is_unaffected(server: HostileServer) -> None:
    server.answers["/token"] = Answer(body=TOKEN, headers=JSON)
    ep = endpoint(server, deadline=DEADLINE)
    try:
        assert (await ep.request()).value == "hostile-token"
    finally:
        await ep.aclose()


@pytest.mark.parametrize("where", ["token endpoint", "metadata"])
def test_the_cli_says_a_corrupt_compressed_answer_is_the_servers_fault(where: str, tmp_path: Path) -> None:
    """A corrupt gzip body is the server's answer, not the signer's: exit 6 (discovery or
    response), never 5 (signer), which is what it was when it surfaced as SigningError."""
    import subprocess
    import sys

    from keyless_m2m.cli import EXIT_DISCOVERY

    secret_file = tmp_path / "secret"
    secret_file.write_text("hostile-cli-secret\n")
    with HostileServer() as server:
        headers = [("content-type", "application/json"), ("content-encoding", "gzip")]
        corrupt = Answer(200, headers, b"not gzip")
        args = [sys.executable, "-m", "keyless_m2m", "token", "--client-id", "svc"]
        args += ["--client-secret-file", str(secret_file), "--auth-method", "client_secret_basic"]
        if where == "metadata":
            server.answers["/.well-known/oauth-authorization-server"] = corrupt
            args += ["--issuer", server.url("").rstrip("/")]
        else:
            server.answers["/token"] = corrupt
            args += ["--token-endpoint", server.url("/token")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_M2M_")}
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
        )
    assert done.returncode == EXIT_DISCOVERY, done.stderr
    assert "SigningError" not in done.stderr
