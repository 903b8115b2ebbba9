"""Many KMS signers cold at once (issue 21): ``python -m benchmarks.goals_signers [--quick]``.

A ``moto_server`` process on loopback (started here, stopped by PID) holds ``SIGNERS``
ECC_NIST_P256 keys. Each run is a fresh worker process (this module with ``--worker``),
so every client is built cold; the two contenders alternate, run after run:

- **ours**: ``SIGNERS`` ``AwsKmsSigner(arn, endpoint_url=..., region=...)``, each one
  building (or sharing) its own boto3 client, all started at once, each ``describe()`` and
  ``sign()`` once;
- **reference**: one boto3 client built once in a worker thread and passed as ``client=``
  to the same number of signers: the same ``GetPublicKey`` and ``Sign`` requests with a
  single client construction, the floor of what sharing can reach.

Measured in each worker, on asyncio: the time until every signer has signed once, the
event loop's longest stall (a ticker task sleeping 1 ms, its longest gap beyond that) and
the latency of a user's ``anyio.to_thread.run_sync`` no-op started just after the signers.
Printed: one Markdown table (medians over the runs) with the ratio ours / reference and
the goal (all signed within 0.5 s, a stall of at most 10 ms, the user's thread call
within 10 ms), and the one-line row the lead's goals table takes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

from tests.moto_server import running_moto_server
from tests.processes import stop_process

from .report import compile_bytecode, environment, progress, secs, table

ROOT = Path(__file__).resolve().parents[1]
SIGNERS = 50
REGION = "us-east-1"
GOAL_SECONDS = 0.5
GOAL_STALL = 0.010
GOAL_USER_CALL = 0.010
FULL = {"runs": 7}
QUICK = {"runs": 3}
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def create_keys(endpoint: str, count: int) -> list[str]:
    import boto3

    client = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    ).client("kms", endpoint_url=endpoint)
    try:
        return [
            str(client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"])
            for _ in range(count)
        ]
    finally:
        client.close()


# -- one worker run ---------------------------------------------------------------------------


async def _worker(kind: str, endpoint: str, arns: Sequence[str]) -> dict[str, float]:
    import anyio
    import anyio.to_thread
    import boto3
    import botocore.config

    from keyless_m2m.signers import AwsKmsSigner

    from .gcpasses import FullPasses, freeze_after_imports

    frozen = kind.endswith("+freeze")
    kind = kind.removesuffix("+freeze")
    if frozen:
        freeze_after_imports()
    passes = FullPasses()
    done = anyio.Event()
    stall = 0.0
    user_call = float("nan")

    async def ticker() -> None:
        nonlocal stall
        while not done.is_set():
            before = perf_counter()
            await anyio.sleep(0.001)
            stall = max(stall, perf_counter() - before - 0.001)

    async def user() -> None:
        nonlocal user_call
        await anyio.sleep(0.002)  # the signers have started
        before = perf_counter()
        await anyio.to_thread.run_sync(lambda: None)
        user_call = perf_counter() - before

    def build() -> Any:
        # What the library builds (one attempt, a pool of 16), built once by the "user".
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=16
        )
        return boto3.session.Session().client("kms", region_name=REGION, endpoint_url=endpoint, config=config)

    async def sign_once(signer: AwsKmsSigner) -> None:
        await signer.sign(b"header.claims")

    signers: list[AwsKmsSigner] = []
    if kind == "prebuilt":
        # The reference with its client built before the clock and the ticker start: what
        # the KMS requests alone cost, and how long the loop stalls without any build.
        client = await anyio.to_thread.run_sync(build)
        signers = [AwsKmsSigner(arn, client=client) for arn in arns]
    async with anyio.create_task_group() as tg:
        # The ticker and the user's call run from the start, the client builds included.
        tg.start_soon(ticker)
        tg.start_soon(user)
        passes.start()
        start = perf_counter()
        if kind == "idle":
            # The machine's own noise: the ticker and the user's call with nothing else running.
            await anyio.sleep(0.3)
        else:
            if kind == "ours":
                signers = [AwsKmsSigner(arn, endpoint_url=endpoint, region=REGION) for arn in arns]
            elif kind == "reference":
                client = await anyio.to_thread.run_sync(build)
                signers = [AwsKmsSigner(arn, client=client) for arn in arns]
            async with anyio.create_task_group() as signing:
                for signer in signers:
                    signing.start_soon(sign_once, signer)
        elapsed = perf_counter() - start
        passes.stop()
        done.set()
    for signer in signers:
        await signer.aclose()
    return {"seconds": elapsed, "stall": stall, "user_call": user_call, "full_gc": passes.longest}


def worker_main(kind: str, endpoint: str, arns: Sequence[str]) -> None:
    import anyio

    result = anyio.run(_worker, kind, endpoint, arns)
    print(json.dumps(result))


def run_worker(kind: str, endpoint: str, arns: Sequence[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DUMMY_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"kind": kind, "endpoint": endpoint, "arns": list(arns)}, spec)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.goals_signers", "--worker", spec.name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            stop_process(proc)
    finally:
        os.unlink(spec.name)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed ({proc.returncode}): {err[-2000:]}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# -- the report -------------------------------------------------------------------------------


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def report(
    ours: list[dict[str, float]],
    ref: list[dict[str, float]],
    prebuilt: list[dict[str, float]],
    idle: list[dict[str, float]],
    load: str,
) -> list[str]:
    def med(rows: list[dict[str, float]], name: str) -> float:
        return statistics.median(r[name] for r in rows)

    rows = []
    for name, label, goal, goal_text in (
        ("seconds", f"{SIGNERS} AwsKmsSigners cold at once, until all signed", GOAL_SECONDS, "<= 0.5 s"),
        ("stall", "event loop's longest stall meanwhile", GOAL_STALL, "<= 10 ms"),
        ("user_call", "a user's to_thread no-op meanwhile", GOAL_USER_CALL, "<= 10 ms"),
    ):
        mine, floor = med(ours, name), med(ref, name)
        rows.append(
            [
                label,
                secs(mine),
                secs(floor),
                f"{mine / floor:.2f}x" if floor > 0 else "-",
                secs(med(prebuilt, name)),
                "-" if name == "seconds" else secs(med(idle, name)),
                goal_text,
                "yes" if mine <= goal else "no",
            ]
        )
    headers = [
        "what",
        "ours",
        "reference (one client)",
        "ratio",
        "client prebuilt",
        "idle loop",
        "goal",
        "met",
    ]
    lines = table(headers, rows)
    lines.append("")
    passes = ", ".join(
        f"{name} {secs(med(rows_, 'full_gc'))}"
        for name, rows_ in (("ours", ours), ("reference", ref), ("client prebuilt", prebuilt))
    )
    lines.append(f"Longest full pass of the cyclic GC within the span (median): {passes}.")
    lines.append("")
    lines.append(
        f"Medians of {len(ours)} runs each (fresh processes, alternating), {load}; moto_server on "
        "the same machine. Reference: one boto3 client built once in a worker thread, passed as "
        "client= to the same number of signers (the same requests). Client prebuilt: the reference "
        "with its client built before the clock and the ticker start (no build measured). Idle "
        "loop: the ticker and the user's call alone, for 0.3 s (the machine's own scheduling noise)."
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.goals_signers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 runs per contender instead of 7")
    parser.add_argument("--runs", type=int, help="runs per contender")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        worker_main(spec["kind"], spec["endpoint"], spec["arns"])
        return 0
    runs = args.runs or (QUICK if args.quick else FULL)["runs"]
    compile_bytecode()  # as an installed user has it: no module compiled from source in a run
    with tempfile.TemporaryDirectory() as tmp, running_moto_server(Path(tmp)) as moto:
        endpoint = moto.endpoint
        arns = create_keys(endpoint, SIGNERS)
        ours: list[dict[str, float]] = []
        ref: list[dict[str, float]] = []
        prebuilt: list[dict[str, float]] = []
        idle: list[dict[str, float]] = []
        load_before = _load()
        for run in range(runs):
            progress(f"run {run + 1}/{runs}")
            ours.append(run_worker("ours", endpoint, arns))
            ref.append(run_worker("reference", endpoint, arns))
            prebuilt.append(run_worker("prebuilt", endpoint, arns))
            idle.append(run_worker("idle", endpoint, arns))
        load = f"{load_before} before, {_load()} after"
    print("## Many signers at once\n")
    print("\n".join(f"- {line}" for line in environment()))
    print()
    print("\n".join(report(ours, ref, prebuilt, idle, load)))
    o = statistics.median(r["seconds"] for r in ours)
    f = statistics.median(r["seconds"] for r in ref)
    s = statistics.median(r["stall"] for r in ours)
    print()
    print("| ours | reference | ratio | goal | met |")
    print("|---|---|---|---|---|")
    met = o <= GOAL_SECONDS and s <= GOAL_STALL
    print(
        f"| {secs(o)}, stall {secs(s)} | {secs(f)} | {o / f:.2f}x | <= 0.5 s, stall <= 10 ms | "
        f"{'yes' if met else 'no'} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
