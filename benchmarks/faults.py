"""Fault injection at a loopback token endpoint: ``python -m benchmarks.faults``.

Runs the scenarios of :mod:`tests.fault_scenarios` (a real loopback authorization server,
one injected fault each, 50 concurrent callers; ``tests/integration/manager/test_faults.py``
runs the same scenarios on asyncio and trio and asserts the counts) and prints what they
did as the Markdown table in ``docs/reliability.md``::

    python -m benchmarks.faults [--backend asyncio|trio] [--json PATH] [SCENARIO ...]

Timings in the table (recovery) are measured, never asserted: they depend on the machine.
The client runs with the test-sized knobs of ``tests.fault_scenarios.RIG_OPTIONS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict

import anyio

from tests.fault_scenarios import CALLERS, SCENARIOS, Outcome


def _errors_cell(outcome: Outcome) -> str:
    if not outcome.errors:
        return f"none (0 of {outcome.callers})"
    kinds = ", ".join(f"{n} {name}" for name, n in sorted(outcome.errors.items()))
    return f"{kinds} (of {outcome.callers})"


def _recovery_cell(outcome: Outcome) -> str:
    if outcome.recovery is None:
        return "no outage seen"
    return f"{outcome.recovery * 1000:.0f} ms"


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| Fault | Injected | Requests made (reached server) | Errors seen by callers | Recovery | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        rows.append(
            f"| {o.fault} | {o.injected} | {o.requests} ({o.arrived}) | {_errors_cell(o)} "
            f"| {_recovery_cell(o)} | {o.notes} |"
        )
    return "\n".join(rows)


async def run_all(names: list[str] | None = None) -> list[Outcome]:
    return [await SCENARIOS[name]() for name in names or list(SCENARIOS)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--json", metavar="PATH", help="also write the outcomes as JSON")
    parser.add_argument("scenario", nargs="*", help=f"default: all of {', '.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the manager's outage warnings are expected here
    unknown = [name for name in args.scenario if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    started = time.monotonic()
    outcomes = anyio.run(run_all, args.scenario, backend=args.backend)
    print(table(outcomes))
    print(
        f"\n{len(outcomes)} scenarios on {args.backend}, {CALLERS} concurrent callers each, "
        f"in {time.monotonic() - started:.1f} s (Python {sys.version.split()[0]})"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(o) for o in outcomes], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
