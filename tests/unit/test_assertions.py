"""keyless_m2m.assertions without a network: configuration errors, the expiry rule, and what
a source or the client authentication shows of itself."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from keyless_m2m import ConfigurationError, WorkloadIdentity
from keyless_m2m._secret import Secret
from keyless_m2m.assertions import (
    JWT_BEARER,
    JWT_SPIFFE,
    AssertionSource,
    FileAssertion,
    GcpMetadataAssertion,
    GitHubActionsAssertion,
    SpiffeJwtSvidAssertion,
)
from keyless_m2m.errors import AssertionSourceError
from tests.frame_locals import secret_locals

pytestmark = pytest.mark.anyio

SIGNATURE = "c2lnbmF0dXJlLWNhbmFyeS0zOWFmNzFiZTA1"


def segment(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def jwt(**claims: Any) -> str:
    return f"{segment({'alg': 'ES256'})}.{segment(claims)}.{SIGNATURE}"


class Queue:
    """An AssertionSource handing out the given values in turn, counting the calls."""

    assertion_type = JWT_BEARER

    def __init__(self, *values: Any) -> None:
        self.values = list(values)
        self.calls = 0

    async def assertion(self) -> Any:
        self.calls += 1
        return self.values.pop(0)


def test_the_sources_satisfy_the_protocol(tmp_path: Any) -> None:
    assert isinstance(FileAssertion(tmp_path / "t"), AssertionSource)
    assert isinstance(Queue(), AssertionSource)
    assert SpiffeJwtSvidAssertion(tmp_path / "t").assertion_type == JWT_SPIFFE
    assert GcpMetadataAssertion("aud", host="127.0.0.1:1").assertion_type == JWT_BEARER


async def test_prepare_sends_the_source_jwt_with_its_type_and_the_client_id() -> None:
    value = jwt(iss="https://k8s.example", sub="system:serviceaccount:a:b", aud="x", exp=time.time() + 600)
    prepared = await WorkloadIdentity("billing", Queue(Secret(value))).prepare("https://as.example/token")
    assert prepared.form["client_id"] == "billing"
    assert prepared.form["client_assertion_type"] == JWT_BEARER
    assert prepared.form["client_assertion"] == Secret(value)
    assert not prepared.signed
    assert prepared.hint is not None and '"system:serviceaccount:a:b"' in prepared.hint
    assert SIGNATURE not in prepared.hint
    leaner = await WorkloadIdentity("billing", Queue(Secret(value)), send_client_id=False).prepare("u")
    assert "client_id" not in leaner.form


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (jwt(sub="s"), "malformed"),  # no exp
        (jwt(sub="s", exp="tomorrow"), "malformed"),
        ("only.two", "malformed"),
        (f"{segment({'alg': 'x'})}.{segment([1, 2])}.{SIGNATURE}", "malformed"),  # claims not an object
        ("a.b.c d", "malformed"),  # a character no JWT has
    ],
)
async def test_what_is_not_a_jwt_with_an_exp_is_refused(value: str, reason: str) -> None:
    source = Queue(Secret(value))
    with pytest.raises(AssertionSourceError) as info:
        await WorkloadIdentity("c", source).prepare("u")
    assert info.value.reason == reason and not info.value.retryable
    assert source.calls == 1
    assert secret_locals(info.value, [SIGNATURE]) == []


async def test_an_expired_jwt_is_fetched_once_more_then_refused() -> None:
    fresh = jwt(sub="s", exp=time.time() + 600)
    source = Queue(Secret(jwt(sub="s", exp=time.time() - 1)), Secret(fresh))
    prepared = await WorkloadIdentity("c", source).prepare("u")
    assert prepared.form["client_assertion"] == Secret(fresh) and source.calls == 2
    stale = Queue(*(Secret(jwt(sub="s", exp=time.time() + 2)) for _ in range(3)))
    with pytest.raises(AssertionSourceError) as info:
        await WorkloadIdentity("c", stale).prepare("u")
    assert info.value.reason == "expired" and info.value.retryable and stale.calls == 2


async def test_a_source_that_returns_a_plain_string_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="must return a Secret"):
        await WorkloadIdentity("c", Queue(jwt(exp=time.time() + 600))).prepare("u")


def test_github_needs_the_variables_of_a_job_with_id_token_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="id-token: write") as info:
        GitHubActionsAssertion(request_token="ghs-canary-token-0123456789")
    assert secret_locals(info.value, ["ghs-canary-token-0123456789"]) == []
    source = GitHubActionsAssertion(
        "aud", request_url="https://gh.example/t?api-version=2.0", request_token="ghs-canary-token-0123456789"
    )
    assert "ghs-canary" not in repr(source) + str(vars(source))


def test_azure_from_env_needs_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    with pytest.raises(ConfigurationError, match="AZURE_FEDERATED_TOKEN_FILE"):
        FileAssertion.from_env()


def test_gcp_host_comes_from_gce_metadata_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
    assert GcpMetadataAssertion("aud").host == "metadata.google.internal"
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:8080")
    assert GcpMetadataAssertion("aud").host == "127.0.0.1:8080"
    with pytest.raises(ConfigurationError):
        GcpMetadataAssertion("aud", host="evil.example/path")
    with pytest.raises(ConfigurationError):
        GcpMetadataAssertion("")


@pytest.mark.parametrize(
    "arguments",
    [
        ("", Queue()),
        ("c", object()),
        ("c", Queue(), {"min_validity": -1}),
        ("c", Queue(), {"min_validity": True}),
    ],
)
def test_workload_identity_checks_its_arguments(arguments: tuple[Any, ...]) -> None:
    options = arguments[2] if len(arguments) > 2 else {}
    with pytest.raises(ConfigurationError):
        WorkloadIdentity(arguments[0], arguments[1], **options)


def test_method_is_private_key_jwt_for_metadata_checks() -> None:
    assert WorkloadIdentity("c", Queue()).method == "private_key_jwt"
