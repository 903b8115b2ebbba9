"""``python -m benchmarks.dpop`` works: its measurements (:mod:`tests.dpop_costs`) run at a
tiny size with a local key and with the proof key in OpenBao transit (the session's dev
server), and their counts are asserted: one proof signed per proof, per API request and per
token request, each one verified by the server it went to. Never a time: those depend on
the machine. Here, not next to the fault scenarios, because the signer tests' conftest
already runs the OpenBao server this needs."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m.dpop import DPoPKey
from keyless_m2m.signers import LocalSigner
from tests.dpop_costs import WARM_UP, Costs, fetch_cost, proof_cost, request_cost, running_servers
from tests.vault_server import VaultServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

N = 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # what the benchmark runs on; trio is covered by the DPoP tests


def assert_counts(costs: Costs, *, verified: bool = True) -> None:
    assert costs.calls == N and len(costs.samples) == N
    assert costs.proofs == N  # one signature per call, no more (no retry, no nonce round)
    if verified:
        assert costs.verified == N
        assert costs.baseline_ok == N and len(costs.baseline) == N


async def measure_all(key: DPoPKey) -> None:
    try:
        with running_servers() as servers:
            assert_counts(await proof_cost("key", key, N), verified=False)
            api = await request_cost("key", key, N, servers)
            assert_counts(api)
            assert api.step_proofs == N and len(api.step) == len(api.baseline_step) == N
            assert_counts(await fetch_cost("key", key, N, servers))
            # Nothing was refused on the way: every API request was a verified DPoP or a Bearer.
            assert set(servers.api.outcomes()) == {"ok", "bearer"}
            assert (
                servers.authorization.dpop_nonces_demanded == servers.authorization.dpop_replays_refused == 0
            )
        # and nothing beside: the warm-ups, the proofs, the token fetch, the requests, their
        # auth steps alone, the token requests
        assert key.proofs == (WARM_UP + N) + (1 + WARM_UP + N + N) + (WARM_UP + N)
    finally:
        await key.signer.aclose()


async def test_a_local_key() -> None:
    await measure_all(DPoPKey(LocalSigner(ec.generate_private_key(ec.SECP256R1()))))


async def test_openbao_transit(vault_server: VaultServer) -> None:
    await measure_all(DPoPKey(vault_server.signer("ecdsa-p256")))
