"""KMS faults seen through a ``TokenManager``: the cached token is served while it is valid.

The per-backend files test each fault's error mapping on the signer itself; this file
adds what they cannot show: a manager holding a valid token keeps serving it while the KMS
throttles, times out, loses the permission or has the key disabled, a manager with no
token gets the typed ``SigningError``, retries are bounded, and service comes back by
itself once the fault ends. Doubles: moto in process (faults injected at botocore's
``before-send`` hook, since moto neither throttles nor checks IAM), the GCP gRPC fake and
the Azure HTTPS fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from keyless_m2m import PrivateKeyJWT, SigningError, TokenManager
from keyless_m2m.signers import Signer
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.emulators.gcp_kms import RpcFault
from tests.aws_faults import KmsSignFaults
from tests.helpers import make_key, require_module

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

ATTEMPTS = 2  # the token endpoint's max_attempts for a retryable SigningError
EVERY_FAULT = pytest.mark.parametrize(
    ("fault", "retryable"), [("throttling", True), ("timeout", True), ("revoked", False), ("disabled", False)]
)


@dataclass
class Backend:
    """A signer and switches for its double's faults; ``calls()`` counts sign calls seen."""

    signer: Signer
    inject: Callable[[str], None]
    heal: Callable[[], None]
    calls: Callable[[], int]


async def _served_while_kms_fails(backend: Backend, fault: str, retryable: bool) -> None:
    with AuthorizationServer(expires_in=3600) as server:
        server.register_client("svc", public_jwk=(await backend.signer.describe()).public_jwk)
        options: dict[str, Any] = {
            "max_attempts": ATTEMPTS,
            "backoff": 0.0,
            "failure_backoff": 0.01,
            "max_failure_backoff": 0.02,
        }
        # refresh_window = the lifetime: every call after the first refreshes in the background
        async with TokenManager(
            server.token_endpoint, PrivateKeyJWT("svc", backend.signer), refresh_window=3600, **options
        ) as warm:
            first = await warm.get_token()
            backend.inject(fault)
            with anyio.fail_after(20):
                while warm.stats.failures < 1 or warm.stats.served_stale < 1:
                    assert await warm.get_token() is first  # the KMS fails, callers don't
                    await anyio.sleep(0.005)
            assert server.token_requests == 1  # signing fails before any token request
            # The last call may have started one more background refresh: let it end, or
            # its KMS calls would count as the cold manager's below.
            with anyio.fail_after(20):
                while warm.stats.refreshes != 1 + warm.stats.failures:  # the first one succeeded
                    await anyio.sleep(0.005)

            # a manager without a token sees the typed error, after bounded tries
            cold = TokenManager(server.token_endpoint, PrivateKeyJWT("svc", backend.signer), **options)
            before = backend.calls()
            with pytest.raises(SigningError) as info:
                await cold.get_token()
            await cold.aclose()
            assert info.value.retryable is retryable
            tries = backend.calls() - before
            # one layer retries: the endpoint's attempts, one KMS call each (no SDK or signer retries)
            assert tries == (ATTEMPTS if retryable else 1)
            assert server.token_requests == 1

            backend.heal()
            with anyio.fail_after(20):
                while (await warm.get_token()).value == first.value:
                    await anyio.sleep(0.005)
            assert warm.stats.served_stale > 0


# -- AWS KMS: moto in process, faults at botocore's before-send hook ------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Backend]:
    boto3 = require_module("boto3", reason="the aws extra is not installed")
    moto = require_module("moto")

    from keyless_m2m.signers import AwsKmsSigner

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        from botocore.config import Config

        # one attempt, as the signer's own client has: the endpoint retries
        config = Config(retries={"total_max_attempts": 1})
        client = boto3.client("kms", region_name="us-east-1", config=config)
        key = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        faults = KmsSignFaults()
        answers = {
            "throttling": (400, "ThrottlingException"),
            "timeout": (503, "KMSInternalException"),
            "revoked": (400, "AccessDeniedException"),
            "disabled": (400, "DisabledException"),
        }
        faults.install(client)
        signer = AwsKmsSigner(key, client=client)

        def inject(fault: str) -> None:
            faults.fault = answers[fault]

        def heal() -> None:
            faults.fault = None

        yield Backend(signer, inject, heal, lambda: faults.calls)
        client.close()


@EVERY_FAULT
async def test_aws_kms_faults(aws: Backend, fault: str, retryable: bool) -> None:
    await _served_while_kms_fails(aws, fault, retryable)


# -- GCP KMS: the gRPC fake -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcp_fake() -> Iterator[Any]:
    require_module("google.cloud.kms_v1", reason="the gcp extra is not installed")
    from keyless_m2m.testing.emulators.gcp_kms import FakeCloudKms

    with FakeCloudKms() as kms:
        kms.add_key("faults", "EC_SIGN_P256_SHA256", private_key=make_key("p256"))
        yield kms


@pytest.fixture
async def gcp(gcp_fake: Any) -> AsyncIterator[Backend]:
    name = f"{gcp_fake.key_ring_name}/cryptoKeys/faults/cryptoKeyVersions/1"

    def inject(fault: str) -> None:
        if fault == "throttling":
            gcp_fake.fail_next(RpcFault("RESOURCE_EXHAUSTED", method="AsymmetricSign", count=None))
        elif fault == "timeout":
            gcp_fake.fail_next(RpcFault("DEADLINE_EXCEEDED", method="AsymmetricSign", count=None))
        elif fault == "revoked":
            gcp_fake.deny(name)
        else:
            gcp_fake.set_state(name, "DISABLED")

    def heal() -> None:
        gcp_fake.clear_faults()
        gcp_fake.allow(name)
        gcp_fake.set_state(name, "ENABLED")

    def calls() -> int:
        return int(gcp_fake.calls["AsymmetricSign"])

    heal()  # the fake is shared by the module: start from a healthy key
    signer = gcp_fake.signer(name)
    yield Backend(signer, inject, heal, calls)
    heal()
    await signer.aclose()


@EVERY_FAULT
async def test_gcp_kms_faults(gcp: Backend, fault: str, retryable: bool) -> None:
    await _served_while_kms_fails(gcp, fault, retryable)


# -- Azure Key Vault: the HTTPS fake --------------------------------------------------------------


@pytest.fixture
async def azure() -> AsyncIterator[Backend]:
    require_module("azure.keyvault.keys", reason="the azure extra is not installed")
    from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault, KeyVaultFault

    with FakeKeyVault() as vault:
        vault.add_key("faults", make_key("p256"))
        signer = vault.signer("faults")

        def inject(fault: str) -> None:
            if fault == "disabled":
                vault.set_enabled("faults", False)
            else:
                vault.fail_next(
                    {
                        "throttling": KeyVaultFault(429, operation="sign", retry_after=0.0, count=None),
                        "timeout": KeyVaultFault(operation="sign", count=None, drop_connection=True),
                        "revoked": KeyVaultFault(403, operation="sign", count=None),
                    }[fault]
                )

        def heal() -> None:
            vault.clear_faults()
            vault.set_enabled("faults", True)

        def calls() -> int:
            return sum(1 for r in vault.requests if r.operation == "sign")

        yield Backend(signer, inject, heal, calls)
        await signer.aclose()


@EVERY_FAULT
async def test_azure_key_vault_faults(azure: Backend, fault: str, retryable: bool) -> None:
    await _served_while_kms_fails(azure, fault, retryable)
