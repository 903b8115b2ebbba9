"""AzureKeyVaultSigner: the real Azure SDK against the HTTPS Key Vault fake.

asyncio runs the SDK's ``.aio`` clients; trio runs the synchronous clients in worker
threads. Signatures are verified with PyJWT from the described public JWK.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from keyless_m2m import ConfigurationError, PrivateKeyJWT, SigningError, TokenManager
from keyless_m2m._jose import jwk_thumbprint
from keyless_m2m.signers import AzureKeyVaultSigner, Signer, signer_from_uri
from keyless_m2m.testing.emulators.azure_key_vault import (
    AsyncFakeKeyVaultCredential,
    FakeKeyVault,
    FakeKeyVaultCredential,
    KeyVaultFault,
)
from tests.contract import SignerContract, sign_jws
from tests.helpers import ALG_KEYS, make_key, require_module, verify_jws
from tests.oidc_provider.clients import AuthServer
from tests.retries import (
    ATTEMPTS,
    Hang,
    assert_cancel_releases_the_caller,
    failing_sign,
    failing_token_request,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
az = require_module("azure.core.exceptions", reason="the azure extra is not installed")
require_module("azure.keyvault.keys", reason="the azure extra is not installed")
require_module("azure.identity", reason="the azure extra is not installed")

CONTRACT_ALGS = ["RS256", "PS256", "ES256", "ES384", "ES512"]


def _fill(vault: FakeKeyVault) -> None:
    vault.add_key("rsa", make_key("rsa"))
    vault.add_key("p256", make_key("p256"))
    vault.add_key("p384", make_key("p384"))
    vault.add_key("p521", make_key("p521"))


@pytest.fixture(scope="module")
def shared_vault() -> Iterator[FakeKeyVault]:
    """One fake for the read-only tests (faults go to a per-test ``vault``)."""
    with FakeKeyVault() as vault:
        _fill(vault)
        yield vault


@pytest.fixture
def vault() -> Iterator[FakeKeyVault]:
    with FakeKeyVault() as fresh:
        _fill(fresh)
        yield fresh


def make_signer(
    vault: FakeKeyVault, name: str, credential: Any = None, **options: Any
) -> AzureKeyVaultSigner:
    return AzureKeyVaultSigner(
        vault.key_url(name),
        credential=credential if credential is not None else vault.async_credential(),
        **vault.client_options(**options),
    )


@pytest.fixture(params=CONTRACT_ALGS)
def expected_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def signer(shared_vault: FakeKeyVault, expected_alg: str) -> AsyncIterator[AzureKeyVaultSigner]:
    name = ALG_KEYS[expected_alg]
    algorithm = expected_alg if name == "rsa" else None  # EC algs are inferred from the curve
    azure_signer = make_signer(shared_vault, name, algorithm=algorithm)
    yield azure_signer
    await azure_signer.aclose()


class TestAzureKeyVaultContract(SignerContract):
    pass


async def _sign_error(
    vault: FakeKeyVault, kind: str, fault: KeyVaultFault
) -> tuple[SigningError, AzureKeyVaultSigner]:
    """Describe a fresh signer, then sign under ``fault``: the ``SigningError`` it raised,
    and the (closed) signer."""
    signer = make_signer(vault, kind)
    try:
        await signer.describe()
        vault.fail_next(fault)
        with pytest.raises(SigningError) as info:
            await signer.sign(b"header.claims")
    finally:
        await signer.aclose()
    return info.value, signer


async def _verifies(signer: Signer) -> dict[str, Any]:
    description = await signer.describe()
    claims = {"sub": "azure", "n": 7}
    assert verify_jws(await sign_jws(signer, claims), dict(description.public_jwk)) == claims
    return dict(description.public_jwk)


# -- protocol: challenge, credentials ----------------------------------------------------------


async def test_bearer_challenge_then_token(vault: FakeKeyVault) -> None:
    credential = vault.async_credential()
    signer = make_signer(vault, "p256", credential)
    try:
        await _verifies(signer)
    finally:
        await signer.aclose()
    first = vault.requests[0]
    assert (first.operation, first.authorized, first.status) == ("get", False, 401)
    assert all(r.authorized and r.status == 200 for r in vault.requests[1:])
    assert [r.operation for r in vault.requests[1:]] == ["get", "sign"]
    assert credential.calls[0] == (("https://vault.azure.net/.default",), vault.tenant_id)
    assert not credential.closed  # credentials passed in are left open


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_sync_and_async_credentials(shared_vault: FakeKeyVault, kind: str) -> None:
    credential: Any = shared_vault.credential() if kind == "sync" else shared_vault.async_credential()
    signer = make_signer(shared_vault, "rsa", credential, algorithm="PS256")
    try:
        await _verifies(signer)
    finally:
        await signer.aclose()
    assert credential.calls


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS384", "PS512"])
async def test_other_rsa_algorithms(shared_vault: FakeKeyVault, alg: str) -> None:
    signer = make_signer(shared_vault, "rsa", algorithm=alg)
    try:
        assert (await _verifies(signer))["alg"] == alg
    finally:
        await signer.aclose()


async def test_hsm_key_types(vault: FakeKeyVault) -> None:
    vault.add_key("rsa-hsm", make_key("rsa"), hsm=True)
    vault.add_key("ec-hsm", make_key("p384"), hsm=True)
    for name, alg in (("rsa-hsm", "RS256"), ("ec-hsm", "ES384")):
        signer = make_signer(vault, name)
        try:
            assert (await _verifies(signer))["alg"] == alg
        finally:
            await signer.aclose()


async def test_default_credential_is_created_lazily_and_closed(
    vault: FakeKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity
    import azure.identity.aio

    created: list[Any] = []

    def fake_default(cls: type[Any]) -> Any:
        def factory(**kwargs: Any) -> Any:
            created.append(cls(vault.token))
            return created[-1]

        return factory

    monkeypatch.setattr(
        azure.identity.aio, "DefaultAzureCredential", fake_default(AsyncFakeKeyVaultCredential)
    )
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", fake_default(FakeKeyVaultCredential))
    signer = AzureKeyVaultSigner(vault.key_url("p256"), **vault.client_options())
    assert created == []  # nothing is created before first use
    await _verifies(signer)
    assert len(created) == 1
    assert not created[0].closed
    await signer.aclose()
    assert created[0].closed
    await signer.aclose()  # idempotent


async def test_usable_again_after_aclose(shared_vault: FakeKeyVault) -> None:
    signer = shared_vault.signer("p256")
    jwk = await _verifies(signer)
    await signer.aclose()
    assert await _verifies(signer) == jwk
    await signer.aclose()


# -- key versions ------------------------------------------------------------------------------


async def test_signing_version_is_pinned_across_rotation(vault: FakeKeyVault) -> None:
    v1 = vault.versions("p256")[-1]
    signer = make_signer(vault, "p256")
    try:
        old_jwk = await _verifies(signer)
        v2_url = vault.rotate_key("p256")
        assert vault.versions("p256")[-1] != v1
        # Still the described version: the old kid keeps meaning the old key.
        assert await _verifies(signer) == old_jwk
        assert {r.key_version for r in vault.sign_requests()} == {v1}
        assert signer.key_name == vault.key_url("p256", v1)
    finally:
        await signer.aclose()
    fresh = make_signer(vault, "p256")
    try:
        new_jwk = await _verifies(fresh)
        assert new_jwk["kid"] != old_jwk["kid"]
        assert fresh.key_name == v2_url
    finally:
        await fresh.aclose()


async def test_explicit_version_after_rotation(vault: FakeKeyVault) -> None:
    v1_url = vault.key_url("rsa", vault.versions("rsa")[-1])
    vault.rotate_key("rsa")
    signer = AzureKeyVaultSigner(v1_url, credential=vault.async_credential(), **vault.client_options())
    try:
        await _verifies(signer)
        assert {(r.operation, r.key_version) for r in vault.requests if r.status == 200} == {
            ("get", v1_url.rsplit("/", 1)[1]),
            ("sign", v1_url.rsplit("/", 1)[1]),
        }
    finally:
        await signer.aclose()


async def test_kid_options(shared_vault: FakeKeyVault) -> None:
    by_url = make_signer(shared_vault, "p384", use_key_vault_kid=True)
    chosen = make_signer(shared_vault, "p384", key_id="my-kid")
    try:
        described = await by_url.describe()
        assert described.key_id == shared_vault.key_url("p384", shared_vault.versions("p384")[-1])
        assert described.public_jwk["kid"] == described.key_id
        assert described.key_id != jwk_thumbprint(described.public_jwk)
        await _verifies(by_url)
        assert (await chosen.describe()).key_id == "my-kid"
    finally:
        await by_url.aclose()
        await chosen.aclose()


# -- errors ------------------------------------------------------------------------------------


def _assert_clean(error: SigningError, vault: FakeKeyVault) -> None:
    """No token in the text, and no chained SDK exception (it holds the request headers)."""
    assert vault.token not in str(error)
    assert "Bearer" not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__


async def test_throttling_is_not_retried_by_the_sdk(vault: FakeKeyVault) -> None:
    # It used to be (azure-core's RetryPolicy, under the token endpoint's attempts): the
    # endpoint is now the one layer that retries, so the signer's next call is the retry.
    signer = make_signer(vault, "p256")
    try:
        await signer.describe()
        vault.fail_next(KeyVaultFault(429, operation="sign", retry_after=0.01))
        with pytest.raises(SigningError) as info:
            await signer.sign(b"header.claims")
        assert info.value.retryable
        await _verifies(signer)
    finally:
        await signer.aclose()
    statuses = [r.status for r in vault.requests if r.operation == "sign" and r.authorized]
    assert statuses == [429, 200]


async def test_persistent_throttling_is_retryable(vault: FakeKeyVault) -> None:
    error, signer = await _sign_error(
        vault, "rsa", KeyVaultFault(429, operation="sign", retry_after=0.01, count=10)
    )
    assert error.retryable
    assert error.code == "Throttled"
    assert "429" in str(error)
    assert error.key == signer.key_name
    assert signer.key_name in str(error)
    _assert_clean(error, vault)
    assert [r.status for r in vault.requests if r.operation == "sign"] == [429]  # the SDK does not retry


async def test_server_errors_are_retryable(vault: FakeKeyVault) -> None:
    error, _ = await _sign_error(vault, "p256", KeyVaultFault(500, operation="sign", count=10))
    assert error.retryable
    assert error.code == "InternalServerError"
    assert "500" in str(error)
    _assert_clean(error, vault)


async def test_forbidden_is_not_retryable(vault: FakeKeyVault) -> None:
    error, _ = await _sign_error(vault, "p256", KeyVaultFault(403, operation="sign"))
    assert not error.retryable
    assert error.code == "Forbidden"
    assert "403" in str(error)
    assert "ForbiddenByRbac" in str(error)
    assert "Key Vault Crypto User" in str(error)
    _assert_clean(error, vault)
    assert [r.status for r in vault.requests if r.operation == "sign"] == [403]  # the SDK does not retry


async def test_missing_key_is_not_retryable(shared_vault: FakeKeyVault) -> None:
    signer = make_signer(shared_vault, "no-such-key")
    try:
        with pytest.raises(SigningError) as info:
            await signer.describe()
    finally:
        await signer.aclose()
    assert not info.value.retryable
    assert info.value.code == "KeyNotFound"
    assert "404" in str(info.value)
    _assert_clean(info.value, shared_vault)


async def test_rejected_token_is_not_retryable(vault: FakeKeyVault) -> None:
    signer = make_signer(vault, "p256", AsyncFakeKeyVaultCredential("not-the-vault-token"))
    try:
        with pytest.raises(SigningError) as info:
            await signer.describe()
    finally:
        await signer.aclose()
    error = info.value
    assert not error.retryable
    assert error.code == "Unauthorized"
    assert "401" in str(error)
    assert "not-the-vault-token" not in str(error)
    _assert_clean(error, vault)


class _BrokenCredential:
    """A credential that fails like azure-identity does, with sensitive-looking text."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise az.ClientAuthenticationError("AADSTS7000215: invalid client secret 'hunter2-secret' provided")


async def test_credential_failure_is_not_retryable(vault: FakeKeyVault) -> None:
    signer = make_signer(vault, "p256", _BrokenCredential())
    try:
        with pytest.raises(SigningError) as info:
            await signer.describe()
    finally:
        await signer.aclose()
    error = info.value
    assert not error.retryable
    assert error.code == "ClientAuthenticationError"
    assert "hunter2" not in str(error)
    assert "AADSTS" not in str(error)
    _assert_clean(error, vault)


async def test_unreachable_vault_is_retryable(vault: FakeKeyVault, tmp_path: Path) -> None:
    # The SDK reads the CA file per connection; keep a copy once the fake is gone.
    ca_copy = tmp_path / "ca.pem"
    shutil.copyfile(vault.cert_path, ca_copy)
    signer = make_signer(vault, "p256", connection_verify=str(ca_copy))
    try:
        await signer.describe()
        vault.stop()
        with pytest.raises(SigningError) as info:
            await signer.sign(b"header.claims")
    finally:
        await signer.aclose()
    assert info.value.retryable
    assert info.value.code == "ServiceRequestError"
    _assert_clean(info.value, vault)


async def test_dropped_connection_is_retryable(vault: FakeKeyVault) -> None:
    error, _ = await _sign_error(
        vault, "p256", KeyVaultFault(operation="sign", count=5, drop_connection=True)
    )
    assert error.retryable
    assert error.code in ("ServiceRequestError", "ServiceResponseError")
    _assert_clean(error, vault)


# -- one call per sign(): the SDK's retries are off, the token endpoint retries -----------------


def sign_calls(vault: FakeKeyVault) -> Any:
    """Authorized sign requests the fake answered (the SDK's 401 challenge excluded)."""
    return lambda: sum(1 for r in vault.requests if r.operation == "sign" and r.authorized)


@pytest.mark.parametrize(
    ("status", "retryable"), [(429, True), (503, True), (0, True), (403, False)], ids=str
)
async def test_one_vault_call_per_failing_sign(vault: FakeKeyVault, status: int, retryable: bool) -> None:
    signer = vault.signer("p256")  # the signer's own SDK settings, no test overrides
    try:
        await signer.describe()
        vault.fail_next(
            KeyVaultFault(status, operation="sign", retry_after=0.0 if status == 429 else None, count=10_000)
        )
        error, calls = await failing_sign(signer, sign_calls(vault))
    finally:
        await signer.aclose()
    assert error.retryable is retryable
    assert calls == 1
    assert "SDK's retries" not in str(error)


@pytest.mark.parametrize(("status", "retryable"), [(429, True), (403, False)], ids=str)
async def test_the_token_endpoint_owns_the_retries(vault: FakeKeyVault, status: int, retryable: bool) -> None:
    signer = vault.signer("rsa")
    try:
        await signer.describe()
        vault.fail_next(
            KeyVaultFault(status, operation="sign", retry_after=0.0 if status == 429 else None, count=10_000)
        )
        error, calls = await failing_token_request(signer, sign_calls(vault))
    finally:
        await signer.aclose()
    assert error.retryable is retryable
    assert calls == (ATTEMPTS if retryable else 1)


async def test_retry_settings_passed_by_the_user_multiply(vault: FakeKeyVault) -> None:
    # Documented: SDK retries the user turns on run under each of the endpoint's attempts.
    signer = vault.signer("p256", retry_total=2, retry_backoff_factor=0.0)
    try:
        await signer.describe()
        vault.fail_next(KeyVaultFault(429, operation="sign", retry_after=0.0, count=10_000))
        _, calls = await failing_sign(signer, sign_calls(vault))
    finally:
        await signer.aclose()
    assert calls == 3


class _HangingCredential(FakeKeyVaultCredential):
    """A synchronous credential whose token call blocks once armed (an identity endpoint
    that does not answer); the SDK calls it in a worker thread."""

    hang: Hang | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        if self.hang is not None:
            self.hang()
        return super().get_token(*scopes, **kwargs)


async def test_cancellation_releases_a_caller_stuck_in_a_blocking_call(vault: FakeKeyVault) -> None:
    credential = _HangingCredential(vault.token)
    signer = vault.signer("p256", credential=credential)
    try:
        await signer.describe()
        # sign() makes a CryptographyClient, whose first request asks the credential again
        credential.hang = hang = Hang()
        await assert_cancel_releases_the_caller(lambda: signer.sign(b"header.claims"), hang)
    finally:
        await signer.aclose()


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ({"curve": "P-256K"}, "P-256K"),
        ({"curve": "Ed25519"}, "no EdDSA"),
        ({"curve": "P-256", "key_ops": ["verify"]}, "does not permit the sign operation"),
        ({"curve": "P-256", "enabled": False}, "disabled"),
    ],
    ids=["p256k", "okp", "no-sign-op", "disabled"],
)
async def test_unusable_keys_are_configuration_errors(
    vault: FakeKeyVault, setup: dict[str, Any], match: str
) -> None:
    vault.add_key("odd", **setup)
    signer = make_signer(vault, "odd")
    try:
        with pytest.raises(ConfigurationError, match=match):
            await signer.describe()
    finally:
        await signer.aclose()
    assert not vault.sign_requests()


@pytest.mark.parametrize(("name", "alg"), [("rsa", "ES256"), ("p256", "ES384"), ("p384", "RS256")])
async def test_algorithm_that_does_not_fit_the_key(shared_vault: FakeKeyVault, name: str, alg: str) -> None:
    signer = make_signer(shared_vault, name, algorithm=alg)
    try:
        with pytest.raises(ConfigurationError, match="does not fit"):
            await signer.describe()
    finally:
        await signer.aclose()


@pytest.mark.parametrize("anyio_backend", [pytest.param(("trio", {}), id="trio")])
async def test_async_azure_identity_credential_under_trio_is_refused(shared_vault: FakeKeyVault) -> None:
    # azure-identity's .aio credentials need aiohttp, i.e. asyncio.
    from azure.identity.aio import ClientSecretCredential

    credential = ClientSecretCredential("tenant-id", "client-id", "client-secret-value")
    signer = make_signer(shared_vault, "p256", credential)
    with pytest.raises(ConfigurationError, match="synchronous credential"):
        await signer.describe()
    await signer.aclose()


def test_clients_belong_to_one_event_loop(shared_vault: FakeKeyVault) -> None:
    signer = make_signer(shared_vault, "p256")
    jwk = anyio.run(_verifies, signer, backend="trio")  # the SDK clients are made here
    with pytest.raises(ConfigurationError, match="belong to trio"):
        anyio.run(signer.sign, b"header.claims", backend="asyncio")
    anyio.run(signer.aclose, backend="trio")
    # After aclose() another loop may use it; the description and pinned version carry over.
    assert anyio.run(_verifies_and_closes, signer, backend="asyncio") == jwk


async def _verifies_and_closes(signer: AzureKeyVaultSigner) -> dict[str, Any]:
    try:
        return await _verifies(signer)
    finally:
        await signer.aclose()


# -- URIs --------------------------------------------------------------------------------------


async def test_azurekms_uri_with_host_and_port(shared_vault: FakeKeyVault) -> None:
    uri = f"azurekms://127.0.0.1:{shared_vault.port}/p521"
    signer = signer_from_uri(uri, credential=shared_vault.async_credential(), **shared_vault.client_options())
    assert isinstance(signer, AzureKeyVaultSigner)
    try:
        assert (await _verifies(signer))["alg"] == "ES512"
    finally:
        await signer.aclose()


async def test_key_id_url_via_from_uri(shared_vault: FakeKeyVault) -> None:
    version = shared_vault.versions("rsa")[-1]
    signer = AzureKeyVaultSigner.from_uri(
        shared_vault.key_url("rsa", version),
        credential=shared_vault.credential(),
        algorithm="PS256",
        **shared_vault.client_options(),
    )
    try:
        assert (await _verifies(signer))["alg"] == "PS256"
        assert signer.key_name == shared_vault.key_url("rsa", version)
    finally:
        await signer.aclose()


# -- end to end --------------------------------------------------------------------------------


async def test_token_from_oidc_provider_with_a_vault_held_key(oidc_provider: AuthServer) -> None:
    # The provider's client "jwt-es256" is registered with the public half of make_key("p256").
    with FakeKeyVault() as vault:
        vault.add_key("m2m-es256", make_key("p256"), hsm=True)
        signer = make_signer(vault, "m2m-es256")
        try:
            auth = PrivateKeyJWT("jwt-es256", signer)
            async with TokenManager(oidc_provider.token_endpoint, auth, scope="pockets.read") as tokens:
                token = await tokens.get_token()
                assert token.value
                assert token.scope == "pockets.read"
                assert tokens.stats.signatures == 1
        finally:
            await signer.aclose()
        assert len(vault.sign_requests()) == 1
