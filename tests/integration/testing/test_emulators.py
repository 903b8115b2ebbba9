"""keyless_m2m.testing.emulators: one lifecycle and one fault API for every double, the old
spellings as deprecated aliases, the old import paths, and the fake Key Vault's one-write,
no-Nagle answers (a behaviour check, not a timing test)."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import SigningError
from keyless_m2m.testing import emulators
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from keyless_m2m.testing.emulators import _base
from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault, KeyVaultFault, KeyVaultHandler
from keyless_m2m.testing.emulators.gcp_kms import CorruptResponse, FakeCloudKms, RpcFault
from keyless_m2m.testing.signers import InMemorySigner
from tests.helpers import require_module
from tests.manager_rig import until

pytestmark = pytest.mark.integration


def azure() -> None:
    require_module("azure.keyvault.keys", reason="the azure extra is not installed")


def gcp() -> None:
    require_module("google.cloud.kms_v1", reason="the gcp extra is not installed")


# -- one lifecycle --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["azure", "gcp"])
def test_every_emulator_has_one_lifecycle(kind: str) -> None:
    if kind == "azure":
        emulator: _base.LoopbackServer = FakeKeyVault()
        scheme = "https"
    else:
        gcp()
        emulator, scheme = FakeCloudKms(), "http"
    assert not emulator.running and emulator.port == 0
    with pytest.raises(RuntimeError, match="not running"):
        emulator.address  # noqa: B018 - the property raises
    assert emulator.start() is emulator
    assert emulator.start() is emulator  # no-op when running
    host, port = emulator.address.rsplit(":", 1)
    assert (host, int(port)) == ("127.0.0.1", emulator.port) and emulator.port > 0
    assert emulator.url == f"{scheme}://{emulator.address}"
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    assert emulator in _base._running  # stopped at interpreter exit if a test forgets
    emulator.stop()
    emulator.stop()  # twice is harmless
    assert not emulator.running and emulator not in _base._running
    with emulator as entered:
        assert entered is emulator and emulator.running
    assert not emulator.running


def test_a_forgotten_emulator_is_stopped_at_exit() -> None:
    vault = FakeKeyVault().start()
    cert = vault.cert_path
    _base._stop_forgotten_servers()
    assert not vault.running
    assert not os.path.exists(cert)


def test_the_authorization_server_spells_its_address_alike() -> None:
    with AuthorizationServer() as server:
        assert server.url == server.issuer == f"http://{server.address}"


# -- one fault API --------------------------------------------------------------------------------


def test_fail_next_refuses_another_doubles_faults() -> None:
    with pytest.raises(TypeError, match=r"FakeKeyVault.fail_next\(\) takes KeyVaultFault objects"):
        FakeKeyVault().fail_next(KeyVaultFault(), Fault(503))
    with (
        AuthorizationServer() as server,
        pytest.raises(TypeError, match=r"AuthorizationServer.fail_next\(\) takes Fault"),
    ):
        server.fail_next(KeyVaultFault())
    with pytest.raises(TypeError, match="BaseException"):
        InMemorySigner().fail_next(Fault(503))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        FakeKeyVault().fail_next(KeyVaultFault(count=0))


def test_faults_are_used_count_times_in_order_and_cleared() -> None:
    vault = FakeKeyVault()
    vault.fail_next(KeyVaultFault(500, operation="get", count=2), KeyVaultFault(403))
    assert vault._take_fault("sign") == KeyVaultFault(403)
    assert vault._take_fault("sign") is None
    assert (
        vault._take_fault("get") == vault._take_fault("get") == KeyVaultFault(500, operation="get", count=2)
    )
    assert vault._take_fault("get") is None
    vault.fail_next(KeyVaultFault(429, count=None))
    assert all(vault._take_fault("sign") is not None for _ in range(50))
    vault.clear_faults()
    assert vault._take_fault("sign") is None


def test_the_fault_object_is_not_changed_by_use() -> None:
    fault = Fault(503, count=2)
    with AuthorizationServer() as server:
        server.fail_next(fault)
        assert server._next_fault(1) is fault and server.faults == [fault]
        assert server._next_fault(2) is fault and server.faults == []
    assert fault.count == 2  # reusable in another test


@pytest.mark.anyio
async def test_the_in_memory_signer_takes_exceptions_as_faults() -> None:
    signer = InMemorySigner()
    signer.fail_next(SigningError("first"), SigningError("second"))
    for expected in ("first", "second"):
        with pytest.raises(SigningError, match=expected):
            await signer.sign(b"x")
    signer.fail_next(SigningError("never raised"))
    signer.clear_faults()
    assert await signer.sign(b"x")


def test_the_cloud_kms_fault_objects() -> None:
    gcp()
    kms = FakeCloudKms()
    kms.fail_next(RpcFault("UNAVAILABLE", method="GetPublicKey"), CorruptResponse("pem_crc32c", count=2))
    assert kms._take_failure("AsymmetricSign") is None
    assert kms._take_failure("GetPublicKey") == ("UNAVAILABLE", "injected UNAVAILABLE")
    assert kms._corrupt("GetPublicKey", "pem") is False
    assert kms._corrupt("GetPublicKey", "pem_crc32c") and kms._corrupt("GetPublicKey", "pem_crc32c")
    assert not kms._corrupt("GetPublicKey", "pem_crc32c")
    with pytest.raises(KeyError):
        kms.fail_next(RpcFault("NOT_A_CODE"))
    with pytest.raises(ValueError, match="no corruptible field"):
        CorruptResponse("pem", method="AsymmetricSign")


# -- the old spellings ----------------------------------------------------------------------------


def test_old_key_vault_spellings_still_work_and_warn() -> None:
    vault = FakeKeyVault()
    with pytest.warns(DeprecationWarning, match=r"fail_next\(KeyVaultFault"):
        vault.fail_next(2, status=429, operation="sign", retry_after=1)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        vault.fail_next(status=0)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        vault.fail_next()  # the old default: one 429
    assert vault._faults.pending() == [
        KeyVaultFault(429, operation="sign", retry_after=1, count=2),
        KeyVaultFault(count=1, drop_connection=True),
        KeyVaultFault(),
    ]
    with pytest.warns(DeprecationWarning, match=r"clear_faults\(\)"):
        vault.reset_faults()
    assert vault._faults.pending() == []


def test_old_cloud_kms_spellings_still_work_and_warn() -> None:
    gcp()
    kms = FakeCloudKms()
    grpc = pytest.importorskip("grpc")
    with pytest.warns(DeprecationWarning, match=r"fail_next\(RpcFault"):
        kms.fail_next("RESOURCE_EXHAUSTED", times=3, method="AsymmetricSign", details="quota")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        kms.fail_next(grpc.StatusCode.UNAVAILABLE)
    with pytest.warns(DeprecationWarning, match=r"CorruptResponse"):
        kms.corrupt_next("signature", times=2)
    assert kms._faults.pending() == [
        RpcFault("RESOURCE_EXHAUSTED", method="AsymmetricSign", details="quota", count=3),
        RpcFault(grpc.StatusCode.UNAVAILABLE),
        CorruptResponse("signature", method="AsymmetricSign", count=2),
    ]
    with pytest.warns(DeprecationWarning, match=r"clear_faults\(\)"):
        kms.reset_faults()
    assert kms._faults.pending() == []


def test_the_new_spellings_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FakeKeyVault().fail_next(KeyVaultFault())
        FakeKeyVault().clear_faults()


def test_the_old_import_paths_are_the_same_objects() -> None:
    from keyless_m2m.testing import azure_key_vault, gcp_kms
    from keyless_m2m.testing.emulators import azure_key_vault as new_azure
    from keyless_m2m.testing.emulators import gcp_kms as new_gcp

    for old, new in ((azure_key_vault, new_azure), (gcp_kms, new_gcp)):
        assert old.__all__, old
        for name in old.__all__:
            assert getattr(old, name) is getattr(new, name), name
        assert set(new.__all__) <= set(old.__all__)
    assert "emulators" in (emulators.__doc__ or "")


# -- the fake Key Vault answers in one write with Nagle off ----------------------------------------


class _RecordingHandler(KeyVaultHandler):
    writes: list[tuple[int, int]] = []  # (TCP_NODELAY, writes) per answer

    def respond(self, status: int, headers: Any, body: bytes) -> None:
        counted = {"writes": 0}
        real = self.wfile

        class Counting:
            def write(self, data: bytes) -> int:
                counted["writes"] += 1
                return real.write(data)

            def flush(self) -> None:
                real.flush()

        self.wfile = Counting()  # type: ignore[assignment]
        try:
            super().respond(status, headers, body)
        finally:
            self.wfile = real
        nodelay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        _RecordingHandler.writes.append((nodelay, counted["writes"]))


class _RecordingVault(FakeKeyVault):
    handler_class = _RecordingHandler


@pytest.fixture
def recording_vault() -> Iterator[_RecordingVault]:
    azure()
    _RecordingHandler.writes = []
    with _RecordingVault() as vault:
        vault.add_key("p256", ec.generate_private_key(ec.SECP256R1()))
        yield vault


@pytest.mark.anyio
async def test_each_key_vault_answer_is_one_write_with_nagle_off(recording_vault: _RecordingVault) -> None:
    signer = recording_vault.signer("p256")
    try:
        await signer.describe()
        for _ in range(3):
            await signer.sign(b"header.claims")
    finally:
        await signer.aclose()
    operations = [r.operation for r in recording_vault.requests]
    assert operations.count("sign") >= 3 and "get" in operations
    # Every answer, the 401 challenge included, went out in one write on a TCP_NODELAY socket.
    # The server thread records an answer's writes just after sending it: the client may
    # read the last answer before that line runs.
    await until(lambda: len(_RecordingHandler.writes) >= len(recording_vault.requests))
    assert len(_RecordingHandler.writes) == len(recording_vault.requests)
    assert all(nodelay and writes == 1 for nodelay, writes in _RecordingHandler.writes), (
        _RecordingHandler.writes
    )
