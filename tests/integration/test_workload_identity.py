"""Workload identity end to end: each assertion source against a loopback double of its
platform, and the embedded AuthorizationServer trusting that platform's issuer
(FederatedCredential). Counts, never times."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyless_m2m import AccessToken, AssertionSourceError, InvalidClientError, TokenManager, WorkloadIdentity
from keyless_m2m.assertions import (
    JWT_BEARER,
    JWT_SPIFFE,
    FileAssertion,
    GcpMetadataAssertion,
    GitHubActionsAssertion,
    SpiffeJwtSvidAssertion,
)
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.frame_locals import secret_locals
from tests.helpers import exception_texts
from tests.workload_platforms import GITHUB_REQUEST_TOKEN, PlatformEndpoint, TestIssuer

pytestmark = pytest.mark.anyio

K8S_SUBJECT = "system:serviceaccount:billing:reporter"
ENTRA_AUDIENCE = "api://AzureADTokenExchange"


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def server() -> Iterator[AuthorizationServer]:
    with AuthorizationServer() as running:
        yield running


@pytest.fixture
def platform(issuer: TestIssuer) -> Iterator[PlatformEndpoint]:
    with PlatformEndpoint(issuer) as running:
        yield running


@pytest.fixture
def github_env(platform: PlatformEndpoint, monkeypatch: pytest.MonkeyPatch) -> PlatformEndpoint:
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", platform.github_url)
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GITHUB_REQUEST_TOKEN)
    return platform


def sent_assertions(server: AuthorizationServer) -> list[str]:
    """Record the client_assertion of every token request the server gets."""
    seen: list[str] = []
    server.on_request = lambda form: seen.extend(form.get("client_assertion", []))
    return seen


async def fetch(server: AuthorizationServer, auth: WorkloadIdentity, **options: Any) -> AccessToken:
    """One token request through a token endpoint of its own (one attempt unless told)."""
    endpoint = TokenEndpoint(server.token_endpoint, auth, **{"max_attempts": 1, "backoff": 0, **options})
    try:
        return await endpoint.request()
    finally:
        await endpoint.aclose()


# -- each source, a token ---------------------------------------------------------------------------


async def test_a_rotated_token_file_is_read_again_for_every_token_request(
    server: AuthorizationServer, issuer: TestIssuer, tmp_path: Path
) -> None:
    audience = server.issuer  # Keycloak's way: the projected token's audience is the realm
    server.register_client("reporter", federated=issuer.credential(K8S_SUBJECT, audience))
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(K8S_SUBJECT, audience) + "\n")
    source = FileAssertion(token_file)
    seen = sent_assertions(server)
    async with TokenManager(
        token_endpoint=server.token_endpoint, client_auth=WorkloadIdentity("reporter", source)
    ) as tokens:
        first = await tokens.get_token()
        token_file.write_text(issuer.mint(K8S_SUBJECT, audience))  # the kubelet rotated it
        second = await tokens.get_token(scope="reports.read")
    assert first.value != second.value
    assert source.reads == 2
    assert server.federated_assertions_verified == 2
    assert len(seen) == 2 and seen[0] != seen[1]
    assert seen[1] == token_file.read_text()


async def test_azure_federated_token_file_from_the_environment(
    server: AuthorizationServer, issuer: TestIssuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.register_client("entra-app", federated=issuer.credential(K8S_SUBJECT, ENTRA_AUDIENCE))
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(issuer.mint(K8S_SUBJECT, ENTRA_AUDIENCE))
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    token = await fetch(server, WorkloadIdentity("entra-app", FileAssertion.from_env()))
    assert token.value in server.issued


async def test_github_actions_token_with_an_audience(
    server: AuthorizationServer, github_env: PlatformEndpoint
) -> None:
    subject = github_env.subject
    server.register_client("ci", federated=github_env.issuer.credential(subject, ENTRA_AUDIENCE))
    source = GitHubActionsAssertion(audience=ENTRA_AUDIENCE)
    seen = sent_assertions(server)
    token = await fetch(server, WorkloadIdentity("ci", source))
    assert token.value in server.issued
    (request,) = github_env.received
    assert request.path == "/github"
    assert request.query == {"api-version": ["2.0"], "audience": [ENTRA_AUDIENCE]}
    assert request.headers["authorization"] == f"Bearer {GITHUB_REQUEST_TOKEN}"
    assert GITHUB_REQUEST_TOKEN not in repr(source) + repr(WorkloadIdentity("ci", source))
    assert seen and seen[0] not in repr(source)


async def test_gcp_metadata_identity_token_with_the_host_from_the_environment(
    server: AuthorizationServer, platform: PlatformEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", platform.address)
    audience = server.issuer
    server.register_client("vm", federated=platform.issuer.credential(platform.subject, audience))
    token = await fetch(server, WorkloadIdentity("vm", GcpMetadataAssertion(audience)))
    assert token.value in server.issued
    (request,) = platform.received
    assert request.path == "/computeMetadata/v1/instance/service-accounts/default/identity"
    assert request.query == {"audience": [audience], "format": ["full"]}
    assert request.headers["metadata-flavor"] == "Google"


async def test_spiffe_jwt_svid_goes_with_the_jwt_spiffe_assertion_type(
    server: AuthorizationServer, issuer: TestIssuer, tmp_path: Path
) -> None:
    spiffe_id = "spiffe://example.org/ns/billing/sa/reporter"
    server.register_client(
        "spiffe-client",
        federated=issuer.credential(spiffe_id, server.issuer, assertion_type=JWT_SPIFFE, issuer=None),
    )
    svid = tmp_path / "jwt_svid.token"
    svid.write_text(issuer.mint(spiffe_id, server.issuer))
    forms: list[dict[str, list[str]]] = []
    server.on_request = forms.append
    auth = WorkloadIdentity("spiffe-client", SpiffeJwtSvidAssertion(svid))
    assert (await fetch(server, auth)).value in server.issued
    assert forms[0]["client_assertion_type"] == [JWT_SPIFFE]
    # The same SVID as a jwt-bearer assertion is refused: the credential names the type.
    bearer = WorkloadIdentity("spiffe-client", FileAssertion(svid, assertion_type=JWT_BEARER))
    with pytest.raises(InvalidClientError, match="client_assertion_type must be"):
        await fetch(server, bearer)


# -- expiry -------------------------------------------------------------------------------------------


async def test_an_expired_platform_jwt_is_fetched_again_never_sent(
    server: AuthorizationServer, github_env: PlatformEndpoint
) -> None:
    issuer = github_env.issuer
    server.register_client("ci", federated=issuer.credential(github_env.subject, ENTRA_AUDIENCE))
    expired = issuer.mint(github_env.subject, ENTRA_AUDIENCE, lifetime=-60)
    github_env.answers.append((200, json.dumps({"value": expired})))
    seen = sent_assertions(server)
    token = await fetch(server, WorkloadIdentity("ci", GitHubActionsAssertion(ENTRA_AUDIENCE)))
    assert token.value in server.issued
    assert len(github_env.received) == 2
    assert len(seen) == 1 and seen[0] != expired


async def test_a_jwt_expiring_within_min_validity_counts_as_expired(
    server: AuthorizationServer, issuer: TestIssuer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint(K8S_SUBJECT, server.issuer, lifetime=3))
    source = FileAssertion(token_file)
    with pytest.raises(AssertionSourceError) as info:
        await fetch(server, WorkloadIdentity("reporter", source))
    assert info.value.reason == "expired" and info.value.retryable
    assert source.reads == 2  # read once more before giving up
    assert server.token_requests == 0
    # With a smaller margin the same file is sent (and refused: no credential registered).
    with pytest.raises(InvalidClientError):
        await fetch(server, WorkloadIdentity("reporter", source, min_validity=0))
    assert server.token_requests == 1


# -- platform failures: typed, retried only when retryable, nothing cached -------------------------------


async def test_a_platform_refusal_is_typed_and_not_retried(
    server: AuthorizationServer, github_env: PlatformEndpoint
) -> None:
    github_env.answers.append((403, '{"message": "no id-token permission"}'))
    auth = WorkloadIdentity("ci", GitHubActionsAssertion(ENTRA_AUDIENCE))
    with pytest.raises(AssertionSourceError) as info:
        await fetch(server, auth, max_attempts=3)
    error = info.value
    assert (error.reason, error.status_code, error.retryable) == ("refused", 403, False)
    assert "id-token: write" in str(error)
    assert len(github_env.received) == 1 and server.token_requests == 0
    assert secret_locals(error, [GITHUB_REQUEST_TOKEN]) == []
    assert not any(GITHUB_REQUEST_TOKEN in text for text in exception_texts(error))


async def test_a_platform_5xx_is_retried_by_the_token_endpoint_then_nothing_is_kept(
    server: AuthorizationServer, platform: PlatformEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GCE_METADATA_HOST", platform.address)
    server.register_client("vm", federated=platform.issuer.credential(platform.subject, server.issuer))
    auth = WorkloadIdentity("vm", GcpMetadataAssertion(server.issuer))
    platform.answers.append((503, "busy"))
    assert (await fetch(server, auth, max_attempts=2)).value in server.issued
    assert len(platform.received) == 2 and server.token_requests == 1
    # Each request asks the platform again: no JWT kept from the last one.
    platform.answers.append((503, "busy"))
    with pytest.raises(AssertionSourceError) as info:
        await fetch(server, auth)
    assert (info.value.reason, info.value.status_code, info.value.retryable) == ("refused", 503, True)
    assert len(platform.received) == 3 and server.token_requests == 1


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("not json", "not a JSON object"),
        ('{"value": 42}', "not a JSON object with a string 'value'"),
        ('{"value": "not-a-jwt"}', "not a JWT"),
    ],
)
async def test_a_platform_answer_that_is_not_a_jwt_is_typed(
    server: AuthorizationServer, github_env: PlatformEndpoint, body: str, what: str
) -> None:
    github_env.answers.append((200, body))
    with pytest.raises(AssertionSourceError, match=what) as info:
        await fetch(server, WorkloadIdentity("ci", GitHubActionsAssertion()))
    assert info.value.reason == "malformed" and not info.value.retryable
    assert server.token_requests == 0


async def test_an_unreachable_platform_endpoint_is_retryable(
    server: AuthorizationServer, issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = PlatformEndpoint(issuer)
    address = closed.address
    closed.stop()  # never started: the port refuses connections
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"http://{address}/github?api-version=2.0")
    monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", GITHUB_REQUEST_TOKEN)
    with pytest.raises(AssertionSourceError) as info:
        await fetch(server, WorkloadIdentity("ci", GitHubActionsAssertion()))
    assert info.value.reason == "unavailable" and info.value.retryable
    assert secret_locals(info.value, [GITHUB_REQUEST_TOKEN]) == []
    assert not any(GITHUB_REQUEST_TOKEN in text for text in exception_texts(info.value))


@pytest.mark.parametrize("case", ["missing", "directory", "oversized"])
async def test_an_unusable_token_file_is_typed(
    server: AuthorizationServer, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "token"
    if case == "directory":
        path.mkdir()
    elif case == "oversized":
        path.write_bytes(b"a" * (64 * 1024 + 1))
    with pytest.raises(AssertionSourceError) as info:
        await fetch(server, WorkloadIdentity("reporter", FileAssertion(path)))
    expected = {
        "missing": ("unreadable", True),
        "directory": ("unreadable", False),
        "oversized": ("malformed", False),
    }[case]
    assert (info.value.reason, info.value.retryable) == expected
    assert server.token_requests == 0


# -- the server's checks, and what a refusal shows ----------------------------------------------------


@pytest.mark.parametrize("wrong", ["audience", "key", "subject"])
async def test_the_server_refuses_what_its_federated_credential_does_not_name(
    server: AuthorizationServer,
    issuer: TestIssuer,
    tmp_path: Path,
    wrong: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    other = TestIssuer(issuer.issuer, kid="platform-1")  # same name and kid, another key
    server.register_client("reporter", federated=issuer.credential(K8S_SUBJECT, server.issuer))
    minted = {
        "audience": issuer.mint(K8S_SUBJECT, "https://elsewhere.example"),
        "key": other.mint(K8S_SUBJECT, server.issuer),
        "subject": issuer.mint("system:serviceaccount:other:app", server.issuer),
    }[wrong]
    token_file = tmp_path / "token"
    token_file.write_text(minted)
    with pytest.raises(InvalidClientError) as info:
        await fetch(server, WorkloadIdentity("reporter", FileAssertion(token_file)))
    error = info.value
    described = {
        "audience": "aud must include",
        "key": "signature does not verify",
        "subject": "trusts no issuer",
    }[wrong]
    assert described in (error.error_description or "")
    assert error.hint is not None and f'iss "{issuer.issuer}"' in error.hint
    signature = minted.rsplit(".", 1)[1]
    assert secret_locals(error, [minted, signature]) == []
    assert not any(signature in text for text in exception_texts(error))
    assert not any(signature in record.getMessage() for record in caplog.records)
