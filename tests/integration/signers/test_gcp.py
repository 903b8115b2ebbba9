"""GcpKmsSigner against the fake Cloud KMS (real gRPC, real SDK clients, real keys).

On asyncio the signer uses the SDK's grpc.aio client; on trio the sync client in worker
threads. Every test runs on both.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless_m2m import PrivateKeyJWT, TokenManager
from keyless_m2m.errors import ConfigurationError, MissingExtraError, SigningError
from keyless_m2m.signers import GcpKmsSigner, signer_from_uri
from keyless_m2m.testing.emulators.gcp_kms import CorruptResponse, RpcFault
from tests.contract import SignerContract, sign_jws
from tests.helpers import make_key, missing_server, verify_jws
from tests.retries import (
    ATTEMPTS,
    Hang,
    assert_cancel_releases_the_caller,
    failing_sign,
    failing_token_request,
)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

KEYS = {
    "RS256": ("rs256", "RSA_SIGN_PKCS1_2048_SHA256"),
    "PS256": ("ps256", "RSA_SIGN_PSS_2048_SHA256"),
    "RS512": ("rs512", "RSA_SIGN_PKCS1_4096_SHA512"),
    "PS512": ("ps512", "RSA_SIGN_PSS_4096_SHA512"),
    "ES256": ("es256", "EC_SIGN_P256_SHA256"),
    "ES384": ("es384", "EC_SIGN_P384_SHA384"),
    "EdDSA": ("eddsa", "EC_SIGN_ED25519"),
}


@pytest.fixture(scope="module")
def fake_kms() -> Iterator[Any]:
    from keyless_m2m.testing.emulators.gcp_kms import FakeCloudKms

    try:
        kms = FakeCloudKms()
    except MissingExtraError as exc:
        missing_server(f"{exc} (the fake Cloud KMS needs the gcp extra)")
    rsa4096 = rsa.generate_private_key(public_exponent=65537, key_size=4096)  # shared: slow to make
    private_keys = {"RS256": make_key("rsa"), "PS256": make_key("rsa"), "RS512": rsa4096, "PS512": rsa4096}
    private_keys |= {"ES256": make_key("p256"), "ES384": make_key("p384"), "EdDSA": make_key("ed25519")}
    for alg, (crypto_key, algorithm) in KEYS.items():
        kms.add_key(crypto_key, algorithm, private_key=private_keys[alg])
    kms.start()
    try:
        yield kms
    finally:
        kms.stop()


@pytest.fixture
def kms(fake_kms: Any) -> Iterator[Any]:
    """The module's fake with no faults or call records left over from another test."""
    fake_kms.clear_faults()
    fake_kms.calls.clear()
    fake_kms.requests.clear()
    yield fake_kms
    fake_kms.clear_faults()


def name_of(kms: Any, alg: str) -> str:
    return f"{kms.key_ring_name}/cryptoKeys/{KEYS[alg][0]}/cryptoKeyVersions/1"


@pytest.fixture
async def make_signer(kms: Any) -> AsyncIterator[Any]:
    """``make_signer(alg_or_name, **options)``; every signer is closed after the test."""
    made: list[GcpKmsSigner] = []

    def factory(key: str, **options: Any) -> GcpKmsSigner:
        signer: GcpKmsSigner = kms.signer(name_of(kms, key) if key in KEYS else key, **options)
        made.append(signer)
        return signer

    yield factory
    for signer in made:
        await signer.aclose()


# -- the contract, per algorithm ---------------------------------------------------------


@pytest.fixture(params=list(KEYS))
def expected_alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def signer(make_signer: Any, expected_alg: str) -> GcpKmsSigner:
    signer: GcpKmsSigner = make_signer(expected_alg)
    return signer


class TestGcpKmsSigner(SignerContract):
    pass


# -- which client, what is sent ------------------------------------------------------------


async def test_asyncio_uses_the_async_client_and_trio_the_sync_one(kms: Any, anyio_backend: Any) -> None:
    made: list[str] = []

    def async_factory() -> Any:
        made.append("async")
        return kms.async_client()

    def sync_factory() -> Any:
        made.append("sync")
        return kms.sync_client()

    signer = GcpKmsSigner(
        name_of(kms, "ES256"), async_client_factory=async_factory, sync_client_factory=sync_factory
    )
    try:
        for _ in range(3):
            await signer.sign(b"a.b")
    finally:
        await signer.aclose()
    assert made == (["async"] if anyio_backend[0] == "asyncio" else ["sync"])
    assert kms.calls == {"GetPublicKey": 1, "AsymmetricSign": 3}


@pytest.mark.parametrize(
    ("alg", "field", "hash_name"), [("ES384", "digest", "sha384"), ("RS512", "digest", "sha512")]
)
async def test_rsa_and_ec_send_a_digest_with_its_crc32c(
    make_signer: Any, kms: Any, alg: str, field: str, hash_name: str
) -> None:
    import hashlib

    import google_crc32c

    await make_signer(alg).sign(b"header.claims")
    method, request = kms.requests[-1]
    assert method == "AsymmetricSign"
    assert request.name == name_of(kms, alg)
    digest = getattr(request.digest, hash_name)
    assert digest == hashlib.new(hash_name, b"header.claims").digest()
    assert request.digest_crc32c == google_crc32c.value(digest)
    assert not request.data


async def test_ed25519_sends_the_data_with_its_crc32c(make_signer: Any, kms: Any) -> None:
    import google_crc32c

    await make_signer("EdDSA").sign(b"header.claims")
    _, request = kms.requests[-1]
    assert request.data == b"header.claims"
    assert request.data_crc32c == google_crc32c.value(b"header.claims")
    assert "digest" not in request


async def test_uri_names_the_key(kms: Any) -> None:
    signer = signer_from_uri(
        "gcpkms://" + name_of(kms, "PS256"),
        async_client_factory=kms.async_client,
        sync_client_factory=kms.sync_client,
    )
    try:
        description = await signer.describe()
        assert description.algorithm == "PS256"
        assert verify_jws(await sign_jws(signer, {"u": 1}), dict(description.public_jwk)) == {"u": 1}
    finally:
        await signer.aclose()


async def test_key_id_override(make_signer: Any) -> None:
    signer = make_signer("ES256", key_id="gcp-kid-1")
    description = await signer.describe()
    assert description.key_id == description.public_jwk["kid"] == "gcp-kid-1"
    assert verify_jws(await sign_jws(signer, {"k": 1}), dict(description.public_jwk)) == {"k": 1}


async def test_requested_algorithm_must_match_the_key(make_signer: Any) -> None:
    assert (await make_signer("PS256", algorithm="PS256").describe()).algorithm == "PS256"
    with pytest.raises(ConfigurationError, match="RSA_SIGN_PSS_2048_SHA256"):
        await make_signer("PS256", algorithm="RS256").describe()


# -- one call per sign()/describe(): the token endpoint owns the retries -------------------------
# A failed check or a transient gRPC code is one retryable SigningError; the signer never
# tries again itself (it used to, 4 times, under the endpoint's own attempts).


def sign_calls(kms: Any) -> Any:
    return lambda: kms.calls["AsymmetricSign"]


@pytest.mark.parametrize(
    ("alg", "field"),
    [
        ("ES256", "signature_crc32c"),
        ("ES256", "signature"),
        ("RS256", "verified_digest_crc32c"),
        ("RS256", "name"),
        ("EdDSA", "verified_data_crc32c"),
    ],
)
async def test_integrity_failure_is_one_retryable_call(
    make_signer: Any, kms: Any, alg: str, field: str
) -> None:
    signer = make_signer(alg)
    await signer.describe()
    kms.fail_next(CorruptResponse(field, count=10))
    error, calls = await failing_sign(signer, sign_calls(kms))
    assert calls == 1
    assert error.code == "INTEGRITY_CHECK_FAILED"
    assert error.retryable
    assert name_of(kms, alg) in str(error)
    assert "damaged in transit" in str(error)


async def test_integrity_failure_then_the_endpoint_retry_succeeds(make_signer: Any, kms: Any) -> None:
    signer = make_signer("ES256")
    description = await signer.describe()
    kms.fail_next(CorruptResponse("signature_crc32c"))
    with pytest.raises(SigningError, match="damaged in transit"):
        await signer.sign(b"a.b")
    assert verify_jws(await sign_jws(signer, {"n": 2}), dict(description.public_jwk)) == {"n": 2}
    assert kms.calls["AsymmetricSign"] == 2


@pytest.mark.parametrize(("field", "match"), [("pem_crc32c", "pem_crc32c"), ("pem", "pem_crc32c")])
async def test_public_key_checksum_is_verified(make_signer: Any, kms: Any, field: str, match: str) -> None:
    kms.fail_next(CorruptResponse(field))
    with pytest.raises(SigningError, match=match) as info:
        await make_signer("ES384").describe()
    assert (info.value.code, info.value.retryable) == ("INTEGRITY_CHECK_FAILED", True)
    assert kms.calls["GetPublicKey"] == 1
    assert (await make_signer("ES384").describe()).algorithm == "ES384"  # the next try is clean


async def test_public_key_name_is_checked(make_signer: Any, kms: Any) -> None:
    kms.fail_next(CorruptResponse("name", method="GetPublicKey", count=5))
    with pytest.raises(SigningError, match="another key version") as info:
        await make_signer("ES256").describe()
    assert info.value.retryable
    assert kms.calls["GetPublicKey"] == 1


@pytest.mark.parametrize("code", ["RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"])
async def test_transient_errors_are_one_retryable_call(make_signer: Any, kms: Any, code: str) -> None:
    signer = make_signer("ES256")
    await signer.describe()
    kms.fail_next(
        RpcFault(code, method="AsymmetricSign", details="Quota exceeded for quota metric 'x'", count=10)
    )
    error, calls = await failing_sign(signer, sign_calls(kms))
    assert calls == 1
    assert (error.code, error.retryable, error.key) == (code, True, name_of(kms, "ES256"))
    assert code in str(error)
    assert name_of(kms, "ES256") in str(error)
    assert "Quota exceeded" not in str(error)  # the provider's text is not echoed
    assert error.__cause__ is None
    assert error.__suppress_context__


async def test_transient_error_on_get_public_key_is_one_call(make_signer: Any, kms: Any) -> None:
    kms.fail_next(RpcFault("UNAVAILABLE", method="GetPublicKey", count=5))
    with pytest.raises(SigningError) as info:
        await make_signer("EdDSA").describe()
    assert (info.value.code, info.value.retryable) == ("UNAVAILABLE", True)
    assert kms.calls["GetPublicKey"] == 1


@pytest.mark.parametrize(("fault", "retryable"), [("RESOURCE_EXHAUSTED", True), ("PERMISSION_DENIED", False)])
async def test_the_token_endpoint_owns_the_retries(
    make_signer: Any, kms: Any, fault: str, retryable: bool
) -> None:
    signer = make_signer("ES256")
    await signer.describe()
    kms.fail_next(RpcFault(fault, method="AsymmetricSign", count=10_000))
    error, calls = await failing_token_request(signer, sign_calls(kms))
    assert (error.code, error.retryable) == (fault, retryable)
    assert calls == (ATTEMPTS if retryable else 1)


class _HangingSyncClient:
    """A real sync client whose AsymmetricSign first blocks (a KMS that does not answer)."""

    def __init__(self, client: Any, hang: Hang) -> None:
        self._client = client
        self._hang = hang
        self.transport = client.transport
        self.signed = threading.Event()  # the abandoned call's RPC has ended

    def get_public_key(self, **kwargs: Any) -> Any:
        return self._client.get_public_key(**kwargs)

    def asymmetric_sign(self, **kwargs: Any) -> Any:
        self._hang()
        try:
            return self._client.asymmetric_sign(**kwargs)
        finally:
            self.signed.set()


async def test_cancellation_releases_a_caller_stuck_in_the_sync_client(kms: Any) -> None:
    # The sync client runs in worker threads (on trio always; here on both backends).
    hang = Hang()
    real = kms.sync_client()
    client = _HangingSyncClient(real, hang)
    signer = GcpKmsSigner(name_of(kms, "ES256"), client=client)
    try:
        await signer.describe()
        await assert_cancel_releases_the_caller(lambda: signer.sign(b"header.claims"), hang)
        # Released, the abandoned thread still sends its AsymmetricSign: wait for it here,
        # or it lands in the next test's call counts.
        assert await anyio.to_thread.run_sync(client.signed.wait, 5)
    finally:
        await signer.aclose()
        real.transport.close()


async def test_permission_denied_is_not_retried(make_signer: Any, kms: Any) -> None:
    name = kms.add_key("denied", "EC_SIGN_P256_SHA256")
    signer = make_signer(name)
    await signer.describe()
    kms.deny(name, "cloudkms.cryptoKeyVersions.useToSign")
    with pytest.raises(SigningError) as info:
        await signer.sign(b"a.b")
    error = info.value
    assert not error.retryable
    assert error.code == "PERMISSION_DENIED"
    assert error.key == name
    assert "useToSign" in str(error)
    assert name in str(error)
    assert kms.calls["AsymmetricSign"] == 1

    kms.deny(name)
    with pytest.raises(SigningError, match="viewPublicKey") as info:
        await make_signer(name).describe()
    assert info.value.code == "PERMISSION_DENIED"
    assert kms.calls["GetPublicKey"] == 2


@pytest.mark.parametrize("state", ["DISABLED", "DESTROYED"])
async def test_a_version_not_enabled_is_failed_precondition(make_signer: Any, kms: Any, state: str) -> None:
    name = kms.add_key(f"state-{state.lower()}", "EC_SIGN_ED25519")
    signer = make_signer(name)
    await signer.describe()
    kms.set_state(name, state)
    with pytest.raises(SigningError) as info:
        await signer.sign(b"a.b")
    assert info.value.code == "FAILED_PRECONDITION"
    assert not info.value.retryable
    assert "not enabled" in str(info.value)
    assert kms.calls["AsymmetricSign"] == 1


async def test_unknown_version_is_not_found(make_signer: Any, kms: Any) -> None:
    with pytest.raises(SigningError) as info:
        await make_signer(f"{kms.key_ring_name}/cryptoKeys/nope/cryptoKeyVersions/7").describe()
    assert info.value.code == "NOT_FOUND"
    assert not info.value.retryable
    assert kms.calls["GetPublicKey"] == 1


# -- keys that cannot sign a JWS ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "why"),
    [
        ("EC_SIGN_SECP256K1_SHA256", "secp256k1"),
        ("RSA_SIGN_RAW_PKCS1_2048", "raw PKCS#1"),
        ("RSA_DECRYPT_OAEP_2048_SHA256", "decryption key"),
    ],
)
async def test_unsupported_algorithms_are_configuration_errors(
    make_signer: Any, kms: Any, algorithm: str, why: str
) -> None:
    name = kms.add_key(f"unsupported-{algorithm.lower().replace('_', '-')}", algorithm)
    with pytest.raises(ConfigurationError, match=why):
        await make_signer(name).describe()
    assert kms.calls["AsymmetricSign"] == 0


async def test_hmac_key_is_refused(make_signer: Any, kms: Any) -> None:
    # Cloud KMS answers GetPublicKey on a MAC (or symmetric) key with FAILED_PRECONDITION, so
    # the algorithm never reaches the signer; the error says what the precondition is.
    name = kms.add_key("hmac", "HMAC_SHA256")
    with pytest.raises(SigningError, match="asymmetric signing key") as info:
        await make_signer(name).describe()
    assert info.value.code == "FAILED_PRECONDITION"
    assert not info.value.retryable


# -- clients ---------------------------------------------------------------------------------------


async def test_aclose_closes_created_clients_but_not_given_ones(kms: Any, anyio_backend: Any) -> None:
    import grpc
    from google.cloud import kms_v1

    created: list[Any] = []

    def remember(factory: Any) -> Any:
        def make() -> Any:
            created.append(factory())
            return created[-1]

        return make

    signer = GcpKmsSigner(
        name_of(kms, "ES256"),
        async_client_factory=remember(kms.async_client),
        sync_client_factory=remember(kms.sync_client),
    )
    await signer.sign(b"a.b")
    await signer.aclose()
    assert len(created) == 1
    request = kms_v1.GetPublicKeyRequest(name=name_of(kms, "ES256"))
    if anyio_backend[0] == "asyncio":
        with pytest.raises(grpc.aio.UsageError, match="closed"):
            await created[0].get_public_key(request=request, retry=None, timeout=5)
    else:
        with pytest.raises(ValueError, match="closed channel"):
            created[0].get_public_key(request=request, retry=None, timeout=5)

    given = kms.sync_client()
    signer = GcpKmsSigner(name_of(kms, "ES256"), client=given)
    await signer.sign(b"a.b")
    await signer.aclose()
    assert given.get_public_key(request=request, timeout=5).name == name_of(kms, "ES256")
    given.transport.close()


async def test_given_async_client_needs_asyncio(kms: Any, anyio_backend: Any) -> None:
    if anyio_backend[0] != "asyncio":
        # A grpc.aio client cannot be driven by trio: say so instead of hanging.
        class AsyncLike:
            async def asymmetric_sign(self, **kwargs: Any) -> Any:
                raise AssertionError("not called")

            async def get_public_key(self, **kwargs: Any) -> Any:
                raise AssertionError("not called")

        with pytest.raises(ConfigurationError, match="needs asyncio"):
            await GcpKmsSigner(name_of(kms, "ES256"), client=AsyncLike()).describe()
        return
    client = kms.async_client()
    try:
        signer = GcpKmsSigner(name_of(kms, "ES384"), client=client)
        description = await signer.describe()
        assert verify_jws(await sign_jws(signer, {"a": 1}), dict(description.public_jwk)) == {"a": 1}
        await signer.aclose()
        assert (await client.get_public_key(name=name_of(kms, "ES384"))).name == name_of(kms, "ES384")
    finally:
        await client.transport.close()


async def test_async_factory_alone_is_refused_on_trio(kms: Any, anyio_backend: Any) -> None:
    signer = GcpKmsSigner(name_of(kms, "ES256"), async_client_factory=kms.async_client)
    try:
        if anyio_backend[0] == "asyncio":
            assert (await signer.describe()).algorithm == "ES256"
        else:
            with pytest.raises(ConfigurationError, match="sync_client_factory"):
                await signer.describe()
    finally:
        await signer.aclose()


# -- end to end ----------------------------------------------------------------------------------------


async def test_token_from_oidc_provider_with_a_fake_kms_key(
    oidc_provider: Any, make_signer: Any, kms: Any
) -> None:
    """The ES256 key the fake holds is the one registered for client ``jwt-es256``."""
    signer = make_signer("ES256")
    auth = PrivateKeyJWT("jwt-es256", signer)
    async with TokenManager(oidc_provider.token_endpoint, auth, scope="pockets.read") as tokens:
        token = await tokens.get_token()
        assert token.value
        assert token.token_type == "Bearer"
        assert tokens.stats.signatures == 1
    assert kms.calls["AsymmetricSign"] == 1
