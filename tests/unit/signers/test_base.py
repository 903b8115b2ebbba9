"""The policies every signer backend shares (``keyless_m2m/signers/_base.py`` and the JWS
algorithm table in ``keyless_m2m/_jose.py``): one unknown-algorithm error, describe once,
one way a provider failure becomes a typed error, and the deprecated keyword names."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keyless_m2m import ConfigurationError, KeylessM2MError, SigningError
from keyless_m2m._jose import ALGORITHMS, Algorithm, jws_algorithm
from keyless_m2m.signers import (
    AwsKmsSigner,
    AzureKeyVaultSigner,
    CachedDescriptionSigner,
    GcpKmsSigner,
    KeyDescription,
    LocalSigner,
    VaultTransitSigner,
)
from keyless_m2m.signers._base import OnceCell, ProviderErrors, call_provider, renamed_keyword

pytestmark = pytest.mark.anyio

GCP_NAME = "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
AZURE_KEY = "https://v1.vault.azure.net/keys/k"
UNKNOWN = (
    "unknown JWS algorithm 'HS256'; "
    "known: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA"
)

# Every backend, built with ``algorithm=`` and nothing that needs the network.
BACKENDS: dict[str, Callable[[Any], object]] = {
    "local": lambda alg: LocalSigner(ec.generate_private_key(ec.SECP256R1()), algorithm=alg),
    "aws": lambda alg: AwsKmsSigner("alias/x", region="eu-west-1", algorithm=alg),
    "azure": lambda alg: AzureKeyVaultSigner(AZURE_KEY, algorithm=alg),
    "gcp": lambda alg: GcpKmsSigner(GCP_NAME, algorithm=alg),
    "vault": lambda alg: VaultTransitSigner("k", url="http://127.0.0.1:8200", token="t", algorithm=alg),
}


# -- one unknown-algorithm error ---------------------------------------------------------------


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_refuses_an_unknown_algorithm_with_one_message(backend: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BACKENDS[backend]("HS256")
    assert str(info.value) == UNKNOWN


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_refuses_a_non_string_algorithm_with_one_message(backend: str) -> None:
    with pytest.raises(ConfigurationError, match=r"the JWS algorithm must be a string, not int$"):
        BACKENDS[backend](256)


def test_jws_algorithm_is_the_table() -> None:
    assert all(jws_algorithm(name) is alg for name, alg in ALGORITHMS.items())
    with pytest.raises(ConfigurationError) as info:
        jws_algorithm("HS256")
    assert str(info.value) == UNKNOWN
    with pytest.raises(ConfigurationError, match=r"^key k: the JWS algorithm must be a string, not list$"):
        jws_algorithm(["ES256"], key="k")


def test_a_description_with_an_unknown_algorithm_is_a_configuration_error() -> None:
    description = KeyDescription(algorithm="HS256", key_id="k", public_jwk={})
    with pytest.raises(ConfigurationError, match="unknown JWS algorithm 'HS256'"):
        description.jws_algorithm  # noqa: B018 - the property is the check


# -- describe once -----------------------------------------------------------------------------


class CountingSigner(CachedDescriptionSigner):
    """Loads its description with checkpoints in between, counting the loads."""

    def __init__(self, failures: int = 0) -> None:
        self.loads = 0
        self.failures = failures
        self._public = ed25519.Ed25519PrivateKey.generate().public_key()

    @property
    def key_name(self) -> str:
        return "counting"

    async def _load_description(self) -> KeyDescription:
        self.loads += 1
        for _ in range(3):  # let every other caller arrive and queue up meanwhile
            await anyio.lowlevel.checkpoint()
        if self.loads <= self.failures:
            raise SigningError("provider down", retryable=True, key=self.key_name)
        return KeyDescription.for_public_key(self._public, "EdDSA")

    async def _sign(self, alg: Algorithm, signing_input: bytes) -> bytes:
        return b"\0" * 64


async def _describe_concurrently(signer: Any, callers: int) -> list[KeyDescription]:
    results: list[KeyDescription] = []

    async def one() -> None:
        results.append(await signer.describe())

    async with anyio.create_task_group() as tasks:
        for _ in range(callers):
            tasks.start_soon(one)
    return results


async def test_a_thousand_concurrent_describes_make_one_load() -> None:
    signer = CountingSigner()
    results = await _describe_concurrently(signer, 1000)
    assert signer.loads == 1
    assert len(results) == 1000
    assert all(result is results[0] for result in results)
    assert await signer.describe() is results[0]
    assert signer.loads == 1


async def test_a_failed_describe_is_tried_again_by_the_next_caller() -> None:
    signer = CountingSigner(failures=1)
    with pytest.raises(SigningError, match="provider down"):
        await signer.describe()
    assert signer._description is None
    description = await signer.describe()
    assert signer.loads == 2
    assert signer._description is description


class _CountingTransit:
    """hvac's ``secrets.transit`` with one Ed25519 key; counts ``read_key`` calls (the
    provider call ``describe()`` makes), which run in worker threads."""

    def __init__(self) -> None:
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._public = base64.b64encode(raw).decode("ascii")
        self._lock = threading.Lock()
        self.reads = 0

    def read_key(self, name: str, mount_point: str) -> dict[str, Any]:
        with self._lock:
            self.reads += 1
        key = {"1": {"public_key": self._public}}
        return {"data": {"type": "ed25519", "latest_version": 1, "keys": key, "supports_signing": True}}


async def test_a_thousand_concurrent_describes_make_one_provider_call() -> None:
    transit = _CountingTransit()
    client = SimpleNamespace(secrets=SimpleNamespace(transit=transit), token="t")
    signer = VaultTransitSigner("k", client=client)
    results = await _describe_concurrently(signer, 1000)
    assert transit.reads == 1
    assert {result.key_id for result in results} == {results[0].key_id}


async def test_once_cell_makes_its_value_once_and_take_empties_it() -> None:
    cell: OnceCell[object] = OnceCell()
    made: list[object] = []

    async def make() -> object:
        await anyio.lowlevel.checkpoint()
        made.append(object())
        return made[-1]

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(cell.get_or_init, make)
    assert len(made) == 1
    assert cell.value is made[0]
    assert cell._lock is None  # no caller left: no lock kept
    assert cell.take() is made[0]
    assert cell.value is None
    assert await cell.get_or_init(make) is made[1]


def test_once_cell_serves_asyncio_then_trio() -> None:
    # The lock lives only while callers contend, so a cell whose init failed under one
    # event loop (with waiters queued) works under the next one, on another backend.
    cell: OnceCell[str] = OnceCell()

    async def fail() -> str:
        await anyio.lowlevel.checkpoint()
        raise SigningError("down")

    async def contend() -> None:
        async def one() -> None:
            with pytest.raises(SigningError, match=r"^down$"):
                await cell.get_or_init(fail)

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(one)

    async def succeed() -> str:
        return "described"

    anyio.run(contend, backend="asyncio")
    assert cell.value is None
    assert cell._lock is None
    assert anyio.run(cell.get_or_init, succeed, backend="trio") == "described"


# -- one way a provider failure becomes a typed error -------------------------------------------


class _SdkError(Exception):
    pass


async def test_call_provider_maps_and_cuts_the_chain() -> None:
    async def fails() -> None:
        raise _SdkError("Authorization: Bearer secret-token")

    def mapped(exc: Exception) -> KeylessM2MError | None:
        return SigningError("mapped", code="E") if isinstance(exc, _SdkError) else None

    with pytest.raises(SigningError, match=r"^mapped$") as info:
        await call_provider(fails, mapped)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert info.value.__suppress_context__


async def test_call_provider_lets_our_errors_and_unmapped_ones_through() -> None:
    async def ours() -> None:
        raise ConfigurationError("ours")

    async def bug() -> None:
        raise RuntimeError("bug")

    def never(exc: Exception) -> KeylessM2MError | None:
        return None

    with pytest.raises(ConfigurationError, match="ours"):
        await call_provider(ours, lambda exc: SigningError("not this"))
    with pytest.raises(RuntimeError, match="bug"):
        await call_provider(bug, never)

    async def fine() -> int:
        return 7

    assert await call_provider(fine, never) == 7


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("Throttled", None, True),
        ("Denied", 500, False),  # a final code wins over the status
        ("New", 503, True),
        ("New", 429, True),
        ("New", 408, True),
        ("New", 404, False),
        ("New", None, False),
    ],
)
def test_provider_errors_table(code: str, status: int | None, retryable: bool) -> None:
    table = ProviderErrors(
        retryable=frozenset({"Throttled"}), final=frozenset({"Denied"}), hints={"Throttled": "slow down"}
    )
    error = table.error("KMS Sign failed for key k", code, key="k", status=status)
    assert (error.retryable, error.code, error.key) == (retryable, code, "k")
    hint = " (slow down)" if code == "Throttled" else ""
    assert str(error) == f"KMS Sign failed for key k: {code}{hint}"


def test_provider_errors_shown_and_hint_override() -> None:
    error = ProviderErrors().error(
        "failed", "HTTP 403", key="k", status=403, shown="HTTP 403 Forbidden", hint="why"
    )
    assert str(error) == "failed: HTTP 403 Forbidden (why)"
    assert not error.retryable


# -- deprecated names -------------------------------------------------------------------------


def test_renamed_keyword() -> None:
    assert renamed_keyword("key_id", "a", "kid", None, owner="S") == "a"
    with pytest.warns(DeprecationWarning, match=r"S\(kid=\.\.\.\) is deprecated; use key_id="):
        assert renamed_keyword("key_id", None, "kid", "b", owner="S") == "b"
    with pytest.raises(ConfigurationError, match="not both"):
        renamed_keyword("key_id", "a", "kid", "b", owner="S")


async def test_azure_kid_is_a_deprecated_name_of_key_id() -> None:
    with pytest.warns(DeprecationWarning, match=r"AzureKeyVaultSigner\(kid=\.\.\.\) is deprecated"):
        signer = AzureKeyVaultSigner(AZURE_KEY, kid="payments-2025")
    assert signer._explicit_kid == "payments-2025"


def test_gcp_max_threads_is_a_deprecated_name_of_max_concurrency() -> None:
    with pytest.warns(DeprecationWarning, match=r"GcpKmsSigner\(max_threads=\.\.\.\) is deprecated"):
        signer = GcpKmsSigner(GCP_NAME, max_threads=4)
    assert signer._max_concurrency == 4
    assert GcpKmsSigner(GCP_NAME, max_concurrency=3)._max_concurrency == 3
    assert GcpKmsSigner(GCP_NAME)._max_concurrency == 16
    with pytest.raises(ConfigurationError, match="not both"):
        GcpKmsSigner(GCP_NAME, max_concurrency=3, max_threads=4)


@pytest.mark.parametrize("backend", ["aws", "azure", "gcp", "vault"])
@pytest.mark.parametrize("value", [0, -1, True, 2.5])
def test_max_concurrency_is_one_name_with_one_check(backend: str, value: object) -> None:
    make: dict[str, Callable[[], object]] = {
        "aws": lambda: AwsKmsSigner("alias/x", region="eu-west-1", max_concurrency=value),
        "azure": lambda: AzureKeyVaultSigner(AZURE_KEY, max_concurrency=value),
        "gcp": lambda: GcpKmsSigner(GCP_NAME, max_concurrency=value),
        "vault": lambda: VaultTransitSigner("k", url="http://127.0.0.1:8200", max_concurrency=value),
    }
    with pytest.raises(ConfigurationError, match=r"^max_concurrency must be a positive integer$"):
        make[backend]()


async def test_max_concurrency_bounds_the_worker_threads() -> None:
    client = SimpleNamespace(secrets=SimpleNamespace(transit=_CountingTransit()), token="t")
    signer = VaultTransitSigner("k", client=client, max_concurrency=3)
    await signer.describe()
    assert signer._limiter is not None
    assert signer._limiter.total_tokens == 3
