"""Soak: ``python -m benchmarks.soak [--duration S] [--tasks N] [--backend asyncio|trio]``.

``N`` tasks (2,000) call a loopback API through ``httpx.AsyncClient(auth=manager.auth())``
for ``S`` seconds (300; CI runs 60 through ``nox -s soak_ci``). The authorization server
issues 5 s tokens and fails 5 % of token requests (503, seeded). The API accepts a token
only while it is within its lifetime, answering 401 ``invalid_token`` otherwise.

Checked at the end (exit status 1 if any bound fails):

- zero caller-visible errors: every API call answered 200;
- token requests ~ one per refresh: fetches <= duration / refresh period + 2, and HTTP
  attempts <= fetches x 1.25 + 2 (the 5 % failures each cost one retry);
- no growth: RSS (psutil) at the end within 25 MiB of RSS after warm-up; no more threads
  than after warm-up; running tasks at the end within 5 of warm-up, and the same number
  after the callers finish as before they started.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import PrivateKeyJWT, TokenManager
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.processes import stop_process

TOKEN_LIFETIME = 5.0
FAILURE_RATE = 0.05
RSS_SLACK = 25 * 1024 * 1024
# Each task pauses 20-40 s between calls (~100 calls/s for 2,000 tasks): below what one
# httpx client sustains here. Above it, calls queue in the connection pool for longer
# than a 5 s token lives, and the API rightly rejects tokens that expired in the queue.
THINK_MIN, THINK_MAX = 20.0, 40.0


class SoakAuthorizationServer(AuthorizationServer):
    """Issues tokens that carry their issue time (``at_<ms>_<random>``), so the API, in a
    process of its own, can check each token's lifetime without shared state."""

    def handle_token_request(
        self, form: dict[str, list[str]], authorization: str | None, *, dpop_proofs: list[str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        status, body = super().handle_token_request(form, authorization, dpop_proofs=dpop_proofs)
        if status == 200:
            body["access_token"] = f"at_{int(time.time() * 1000)}_{body['access_token'][3:]}"
        return status, body


# The API runs in its own process: in this one, its threads would contend with the event
# loop for the GIL and queue requests for seconds (longer than a 5 s token lives).
API_SERVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIFETIME = float(sys.argv[1])
counts = {"accepted": 0, "rejected": 0}

class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        return

    def do_GET(self):
        if self.path == "/stats":
            body = ("%(accepted)d %(rejected)d" % counts).encode()
            status, extra = 200, []
        else:
            header = self.headers.get("Authorization", "")
            try:
                issued = int(header.split("_")[1]) / 1000 if header.startswith("Bearer at_") else None
            except (IndexError, ValueError):
                issued = None
            if issued is None or time.time() - issued > LIFETIME:
                counts["rejected"] += 1
                status, body = 401, b'{"error":"invalid_token"}'
                extra = [("WWW-Authenticate", 'Bearer error="invalid_token"')]
            else:
                counts["accepted"] += 1
                status, body, extra = 200, b'{"pockets":[]}', []
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

httpd = ThreadingHTTPServer(("127.0.0.1", 0), Api)
httpd.daemon_threads = True
print(httpd.server_address[1], flush=True)
httpd.serve_forever(poll_interval=0.05)
"""


@contextmanager
def api_server() -> Iterator[str]:
    """The API process (:data:`API_SERVER`); yields its base URL, stops it by PID."""
    proc = subprocess.Popen(
        [sys.executable, "-c", API_SERVER, str(TOKEN_LIFETIME)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        proc.stdout.close()


@dataclass
class SoakResult:
    backend: str
    duration: float
    tasks: int
    api_calls: int
    caller_errors: int
    api_rejections: int
    token_fetches: int
    token_attempts: int
    injected_failures: int
    expected_fetches: float
    rss_warm_mib: float
    rss_end_mib: float
    tasks_warm: int
    tasks_end: int
    tasks_before: int
    tasks_after: int
    threads_warm: int
    threads_end: int
    failures: list[str]


async def soak(duration: float, n_tasks: int, backend: str, seed: int = 7) -> SoakResult:
    rng = random.Random(seed)
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()))
    process = psutil.Process()
    errors: Counter[str] = Counter()
    calls = 0
    injected = 0

    def policy(n: int) -> Fault | None:
        nonlocal injected
        if rng.random() < FAILURE_RATE:
            injected += 1
            return Fault(503, body={"error": "temporarily_unavailable"})
        return None

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    timeout = httpx.Timeout(10.0, pool=60.0)
    with SoakAuthorizationServer(expires_in=TOKEN_LIFETIME) as server, api_server() as api_base:
        server.register_client("soak", public_jwk=(await signer.describe()).public_jwk)
        server.fault_policy = policy
        api_url = f"{api_base}/v2/pockets/"
        async with (
            TokenManager(
                server.token_endpoint, PrivateKeyJWT("soak", signer), backoff=0.05, max_backoff=0.5
            ) as tokens,
            httpx.AsyncClient(auth=tokens.auth(), limits=limits, timeout=timeout) as http,
        ):
            stop_at = time.monotonic() + duration
            warm: dict[str, float] = {}

            async def caller(i: int) -> None:
                nonlocal calls
                think = random.Random(i)
                await anyio.sleep(think.uniform(0, THINK_MIN))  # spread the start: no burst
                while time.monotonic() < stop_at:
                    try:
                        response = await http.get(api_url)
                        calls += 1
                        if response.status_code != 200:
                            errors[f"HTTP {response.status_code}"] += 1
                    except Exception as exc:  # anything a caller would see
                        errors[type(exc).__name__] += 1
                    await anyio.sleep(think.uniform(THINK_MIN, THINK_MAX))

            async def measure_warm() -> None:
                await anyio.sleep(min(15.0, duration / 4))
                gc.collect()
                warm["rss"] = process.memory_info().rss
                warm["tasks"] = len(anyio.get_running_tasks())
                warm["threads"] = threading.active_count()

            tasks_before = len(anyio.get_running_tasks())
            async with anyio.create_task_group() as tg:
                tg.start_soon(measure_warm)
                for i in range(n_tasks):
                    tg.start_soon(caller, i)
                # the end measurement, while every caller task still runs
                await anyio.sleep(duration - 0.5)
                gc.collect()
                rss_end = process.memory_info().rss
                tasks_end = len(anyio.get_running_tasks())
                threads_end = threading.active_count()
            await anyio.sleep(0.2)  # let the manager's last background refresh settle
            tasks_after = len(anyio.get_running_tasks())
            counts = (await http.get(f"{api_base}/stats")).text.split()
            stats = tokens.stats

    refresh_period = TOKEN_LIFETIME * 0.9 - TOKEN_LIFETIME / 4  # leeway 10 %, window 25 %
    expected = duration / refresh_period
    failures = []
    if errors:
        failures.append(f"caller-visible errors: {dict(errors)}")
    if stats.refreshes > expected + 2:
        failures.append(f"{stats.refreshes} token fetches for ~{expected:.0f} refreshes")
    if stats.requests > stats.refreshes * 1.25 + 2:
        failures.append(f"{stats.requests} token requests for {stats.refreshes} fetches")
    if rss_end - warm["rss"] > RSS_SLACK:
        failures.append(f"RSS grew by {(rss_end - warm['rss']) / 2**20:.1f} MiB")
    if tasks_end > warm["tasks"] + 5 or tasks_after > tasks_before:
        failures.append(
            f"tasks: {tasks_before} before, {warm['tasks']:.0f} warm, {tasks_end} end, {tasks_after} after"
        )
    if threads_end > warm["threads"]:
        failures.append(f"threads grew from {warm['threads']:.0f} to {threads_end}")
    return SoakResult(
        backend=backend,
        duration=duration,
        tasks=n_tasks,
        api_calls=calls,
        caller_errors=sum(errors.values()),
        api_rejections=int(counts[1]),
        token_fetches=stats.refreshes,
        token_attempts=stats.requests,
        injected_failures=injected,
        expected_fetches=round(expected, 1),
        rss_warm_mib=round(warm["rss"] / 2**20, 1),
        rss_end_mib=round(rss_end / 2**20, 1),
        tasks_warm=int(warm["tasks"]),
        tasks_end=tasks_end,
        tasks_before=tasks_before,
        tasks_after=tasks_after,
        threads_warm=int(warm["threads"]),
        threads_end=threads_end,
        failures=failures,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.duration < 10:
        parser.error("--duration must be at least 10 s (warm-up is measured after a quarter of it)")
    logging.basicConfig(level=logging.ERROR)  # refresh warnings during injected failures are expected
    result = anyio.run(soak, args.duration, args.tasks, args.backend, backend=args.backend)
    for name, value in asdict(result).items():
        print(f"{name:>18}: {value}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(asdict(result), fh, indent=2)
    print("PASS" if not result.failures else "FAIL: " + "; ".join(result.failures))
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
