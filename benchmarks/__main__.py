"""``python -m benchmarks [--quick] [--plot PATH] [--json PATH] [--no-trio]``

Runs every scenario for keyless-m2m, Authlib and httpx-auth in this one process and
prints Markdown tables with ratios against keyless-m2m (``vs ours``: the peer's figure
divided by ours; above 1x means more requests, more time or a longer stall than ours).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from dataclasses import asdict
from typing import Any

import anyio

from . import report
from .contenders import Authlib, Baseline, HttpxAuth, KeylessM2M
from .report import progress
from .scenarios import (
    LATENCY,
    THINK,
    Factory,
    hot_path,
    stampede,
    stampede_median,
    trio_section,
    under_load,
)

PKJWT = functools.partial(KeylessM2M, private_key_jwt=True)
OWN_CLIENT = functools.partial(KeylessM2M, http_client=True)
APP_LOCK = functools.partial(Authlib, app_lock=True)

FULL: dict[str, Any] = {
    "stampede": (1_000, 10_000),
    "repeats": 3,
    "runs": 15,
    "callers": 1_000,
    "expiry": 10.0,
    "outage": (3.0, 3.0),
    "outage_duration": 9.0,
}
STAMPEDE: tuple[Factory, ...] = (KeylessM2M, OWN_CLIENT, PKJWT, Authlib, APP_LOCK, HttpxAuth)
QUICK: dict[str, Any] = {
    "stampede": (1_000,),
    "repeats": 1,
    "runs": 5,
    "callers": 1_000,
    "expiry": 2.5,
    "outage": (0.5, 1.5),
    "outage_duration": 2.5,
}


async def run_asyncio(config: dict[str, Any]) -> dict[str, Any]:
    progress("warming up (imports, first TLS contexts, first connections; not measured)")
    for factory in STAMPEDE:
        await stampede(factory, 10)

    stampedes = []
    for callers in config["stampede"]:
        for factory in STAMPEDE:
            progress(f"stampede of {callers:,}: {_name(factory)}")
            stampedes.append(await stampede_median(factory, callers, config["repeats"]))

    progress("hot path")
    *hot, steps = await hot_path((KeylessM2M, Authlib, HttpxAuth), config["runs"])

    expiry = []
    for factory in (KeylessM2M, PKJWT, Authlib, HttpxAuth, Baseline):
        progress(f"expiry under load ({config['expiry']:g} s): {_name(factory)}")
        expiry.append(await under_load(factory, callers=config["callers"], duration=config["expiry"]))

    outage = []
    for factory in (KeylessM2M, PKJWT, Authlib, HttpxAuth):
        progress(f"outage under load ({config['outage_duration']:g} s): {_name(factory)}")
        outage.append(
            await under_load(
                factory,
                callers=config["callers"],
                duration=config["outage_duration"],
                outage=config["outage"],
            )
        )
    return {"stampede": stampedes, "hot": hot, "steps": steps, "expiry": expiry, "outage": outage}


def _name(factory: Any) -> str:
    names = {KeylessM2M: "keyless-m2m", PKJWT: "keyless-m2m (private_key_jwt)", Authlib: "authlib"}
    names.update({APP_LOCK: "authlib + app lock", HttpxAuth: "httpx-auth"})
    names[OWN_CLIENT] = "keyless-m2m (http_client= given)"
    names[Baseline] = "baseline (no token)"
    return names.get(factory, repr(factory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="keyless-m2m vs Authlib and httpx-auth, side by side in one process.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a ~35 s version (1,000 callers only, shorter load runs)"
    )
    parser.add_argument("--plot", metavar="PATH", help="write the latency-percentile plot (PNG) here")
    parser.add_argument("--json", metavar="PATH", help="write the raw results (JSON) here")
    parser.add_argument("--no-trio", action="store_true", help="skip the keyless-m2m-on-trio section")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL

    # The libraries log every failed fetch; the outage scenario would flood the terminal.
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    results = anyio.run(run_asyncio, config, backend="asyncio")
    trio_results = None
    if not args.no_trio:
        try:
            import trio  # noqa: F401
        except ImportError:
            progress("trio is not installed: skipping the trio section")
        else:
            progress("keyless-m2m on trio")
            trio_results = anyio.run(trio_section, config["runs"], config["stampede"], backend="trio")
    elapsed = time.perf_counter() - started

    out: list[str] = []
    out.append("# keyless-m2m benchmarks" + (" (--quick)" if args.quick else ""))
    out.append("")
    out.extend(f"- {line}" for line in report.environment())
    out.append(
        f"- token endpoint: loopback, {LATENCY * 1000:.0f} ms per token response; "
        f"client_secret_basic unless stated; asyncio; total run {elapsed:.0f} s"
    )
    out.append("")
    out.append(
        "## 1. Cold stampede (all callers released at once on an empty cache; "
        f"median of {config['repeats']} runs, one when a run takes over 3 s)"
    )
    out.append("")
    out.extend(report.stampede_table(results["stampede"]))
    out.append("")
    out.extend(report.error_notes(results["stampede"]) or ["- no caller saw an error"])
    out.append("")
    out.append(f"## 2. Hot path (fresh cached token, best of {config['runs']} runs)")
    out.append("")
    out.extend(report.hot_path_table(*results["hot"]))
    out.append("")
    out.append("Where keyless-m2m's hot-path time goes (stand-ins built up one step at a time):")
    out.append("")
    out.extend(report.steps_table(results["steps"]))
    out.append("")
    think = f"{THINK[0] * 1000:.0f}-{THINK[1] * 1000:.0f} ms"
    out.append(
        f"## 3. Expiry under load ({config['callers']:,} callers, {config['expiry']:g} s, "
        f"tokens live 2 s, {think} simulated API call between calls)"
    )
    out.append("")
    out.extend(report.expiry_table(results["expiry"]))
    out.append("")
    out.extend(report.error_notes(results["expiry"]) or ["- no caller saw an error"])
    out.append("")
    start, length = config["outage"]
    out.append(
        f"## 4. Outage under load (same load, {config['outage_duration']:g} s; every token request "
        f"answers 503 from t={start:g} s for {length:g} s)"
    )
    out.append("")
    out.extend(report.outage_table(results["outage"]))
    out.append("")
    out.extend(report.error_notes(results["outage"]) or ["- no caller saw an error"])
    out.append("")
    if trio_results is not None:
        out.append("## keyless-m2m on trio")
        out.append("")
        floor = trio_results["floor"]
        out.append(
            f"- hot path: get_token() {report.ns(trio_results['token_ns'])} "
            f"({report.ratio(trio_results['token_ns'], floor)} trio's `await noop()` floor of "
            f"{report.ns(floor)}); httpx auth step {report.ns(trio_results['flow_ns'])}"
        )
        for r in trio_results["stampedes"]:
            out.append(
                f"- stampede of {r.callers:,}: {r.requests} token request(s), all served in "
                f"{report.secs(r.seconds)}, worst loop stall {report.secs(r.stall)}, {r.errors} errors"
            )
        out.append("")
    out.append("## Headline ratios")
    out.append("")
    out.extend(report.headline(results["stampede"], results["hot"], results["expiry"], results["outage"]))
    print("\n".join(out), flush=True)

    if args.plot:
        report.plot(
            results["expiry"],
            args.plot,
            f"get_token() latency, expiry under load: {config['callers']:,} callers, "
            f"{config['expiry']:g} s, 2 s tokens, 50 ms token endpoint",
        )
        progress(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(_jsonable(results, trio_results, config), fh, indent=2)
        progress(f"results written to {args.json}")
    return 0


def _jsonable(results: dict[str, Any], trio_results: dict[str, Any] | None, config: dict[str, Any]) -> Any:
    def load(r: Any) -> dict[str, Any]:
        d = asdict(r)
        d.pop("latencies_ns")
        d.update({f"p{q}": r.p(q / 100) for q in (50, 90, 99)} | {"max": r.p(1.0)})
        return d

    floor, empty, hot = results["hot"]
    return {
        "config": config,
        "environment": report.environment(),
        "stampede": [asdict(r) for r in results["stampede"]],
        "hot_path": {"floor_ns": floor, "empty_loop_ns": empty, "results": [asdict(r) for r in hot]},
        "hot_path_steps": results["steps"],
        "expiry": [load(r) for r in results["expiry"]],
        "outage": [load(r) for r in results["outage"]],
        "trio": None
        if trio_results is None
        else {**trio_results, "stampedes": [asdict(r) for r in trio_results["stampedes"]]},
    }


if __name__ == "__main__":
    sys.exit(main())
