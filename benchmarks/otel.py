"""``python -m benchmarks.otel [--rounds N] [--calls N] [--no-trio] [--quick]``

What the OpenTelemetry integration costs ``get_token()`` on the hot path (a fresh cached
token), in one process, the three cases interleaved round by round so that they share
the machine's noise:

- ``absent``: not instrumented. The library never imports OpenTelemetry (a test checks
  it), so this is also the hot path of an install without the extra;
- ``installed, unconfigured``: ``instrument()`` with the API's default providers (no SDK):
  what a service that has the extra but never configured OpenTelemetry runs;
- ``configured``: ``instrument()`` with the SDK's tracer and meter providers and a metric
  reader, so the cache-hit counter runs on every call.

Each round times ``--calls`` calls (GC off) on this thread's CPU clock, so the time the
process spends waiting for a core on a loaded machine is left out; the table shows each
case's best and median round, and the median over rounds of the case's time divided by
``absent``'s in the same round (paired, so that slow drifts of the machine cancel). The
token comes from the embedded authorization server on loopback (one real fetch, not
timed).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from time import thread_time_ns
from typing import Any

import anyio

from keyless_m2m import ClientSecretBasic, TokenManager
from keyless_m2m.testing.authorization_server import AuthorizationServer

CASES = ("absent", "installed, unconfigured", "configured")


def _sdk() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider(), MeterProvider(metric_readers=[InMemoryMetricReader()])


def _switch(case: str, sdk: tuple[Any, Any]) -> None:
    from keyless_m2m.integrations import opentelemetry as kotel

    if case == "absent":
        kotel.uninstrument()
    elif case == "installed, unconfigured":
        kotel.instrument()
    else:
        kotel.instrument(tracer_provider=sdk[0], meter_provider=sdk[1])


async def _round(tokens: TokenManager, calls: int) -> float:
    get_token = tokens.get_token
    gc.disable()
    try:
        started = thread_time_ns()
        for _ in range(calls):
            await get_token()
        return (thread_time_ns() - started) / calls
    finally:
        gc.enable()


async def measure(rounds: int, calls: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {case: [] for case in CASES}
    sdk = _sdk()
    with AuthorizationServer() as server:
        server.register_client("bench", client_secret="bench-secret")
        async with TokenManager(server.token_endpoint, ClientSecretBasic("bench", "bench-secret")) as tokens:
            await tokens.get_token()  # the one fetch; every timed call is a cache hit
            for _ in range(rounds):
                for case in CASES:
                    _switch(case, sdk)
                    await _round(tokens, calls // 10)  # warm the case's path
                    results[case].append(await _round(tokens, calls))
            _switch("absent", sdk)
            if tokens.stats.requests != 1:
                raise RuntimeError(f"expected one token request, saw {tokens.stats.requests}")
    return results


def table(backend: str, results: dict[str, list[float]]) -> list[str]:
    absent = results["absent"]
    out = [
        f"### get_token() hot path, {backend}",
        "",
        "| case | best ns/call | median ns/call | best vs absent | paired median vs absent |",
        "|---|---:|---:|---:|---:|",
    ]
    for case in CASES:
        times = results[case]
        paired = statistics.median(t / a for t, a in zip(times, absent, strict=True))
        out.append(
            f"| {case} | {min(times):.0f} | {statistics.median(times):.0f} | "
            f"{min(times) / min(absent):.3f}x | {paired:.3f}x |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.otel", description=__doc__.splitlines()[2])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--no-trio", action="store_true")
    parser.add_argument("--quick", action="store_true", help="50 rounds instead of --rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 50
    backends = ["asyncio"] if args.no_trio else ["asyncio", "trio"]
    out = ["## OpenTelemetry on the hot path", ""]
    python = sys.version.split()[0]
    out.append(f"- {args.rounds} rounds of {args.calls:,} calls per case, interleaved; Python {python}")
    out.append("")
    for backend in backends:
        results = anyio.run(measure, args.rounds, args.calls, backend=backend)
        out.extend(table(backend, results))
        out.append("")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
