"""Tables (Markdown pipe tables, readable in a terminal too), ratios and the plot."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .scenarios import HotPathResult, LoadResult, StampedeResult

OURS = "keyless-m2m"
_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("keyless-m2m", "authlib", "httpx-auth", "httpx", "httpx2", "anyio", "trio", "matplotlib")


def compile_bytecode() -> None:
    """Byte-compile the environment's packages and this checkout's, as ``pip install`` does
    when it installs (uv only with ``--compile-bytecode``). Without it, and with
    ``PYTHONDONTWRITEBYTECODE`` set, every fresh process compiles each module it imports
    from source: 0.5 s of a cold start that no installed user pays."""
    import compileall
    import sysconfig

    paths = sysconfig.get_paths()
    for directory in sorted({paths["purelib"], paths["platlib"]}):
        compileall.compile_dir(directory, quiet=2, workers=1)
    for package in ("keyless_m2m", "benchmarks", "tests"):
        compileall.compile_dir(str(_ROOT / package), quiet=2, workers=1)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def versions(names: Sequence[str] = PACKAGES) -> str:
    """``name version`` of each distribution in ``names``, comma-separated."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def environment() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu})",
        versions(),
    ]


def ns(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value < 1e3:
        return f"{value:.0f} ns"
    if value < 1e6:
        return f"{value / 1e3:.1f} µs"
    if value < 1e9:
        return f"{value / 1e6:.1f} ms"
    return f"{value / 1e9:.2f} s"


def secs(value: float) -> str:
    return ns(value * 1e9)


def ratio(value: float, ours: float) -> str:
    if ours <= 0 or math.isnan(value) or math.isnan(ours):
        return "-"
    r = value / ours
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.1f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])]


def _ours(results: Sequence[Any]) -> Any:
    return next(r for r in results if r.name == OURS)


def stampede_table(results: Sequence[StampedeResult]) -> list[str]:
    rows = []
    for callers in sorted({r.callers for r in results}):
        group = [r for r in results if r.callers == callers]
        ours = _ours(group)
        for r in group:
            rows.append(
                [
                    f"{callers:,}",
                    r.name,
                    f"{r.requests:,}",
                    ratio(r.requests, ours.requests),
                    secs(r.seconds),
                    ratio(r.seconds, ours.seconds),
                    secs(r.stall),
                    ratio(r.stall, ours.stall),
                    f"{r.errors:,}",
                ]
            )
    headers = [
        "callers",
        "library",
        "token requests",
        "vs ours",
        "all callers served",
        "vs ours",
        "worst loop stall",
        "vs ours",
        "caller errors",
    ]
    return table(headers, rows)


def hot_path_table(floor: float, empty: float, results: Sequence[HotPathResult]) -> list[str]:
    ours = _ours(results)
    rows = [
        ["`for` loop alone (included in every row)", ns(empty), "-", "-", "-", "-"],
        ["floor: `await noop()`", ns(floor), "1.0x", "-", "-", "-"],
    ]
    for r in results:
        rows.append(
            [
                r.name,
                ns(r.token_ns),
                ratio(r.token_ns, floor),
                ratio(r.token_ns, ours.token_ns),
                ns(r.flow_ns),
                ratio(r.flow_ns, ours.flow_ns),
            ]
        )
    headers = ["library", "token check / call", "vs floor", "vs ours", "httpx auth step / request", "vs ours"]
    return table(headers, rows)


def steps_table(steps: Sequence[tuple[str, float]]) -> list[str]:
    floor = steps[0][1]
    rows = []
    previous = None
    for label, value in steps:
        step = (
            "-" if previous is None or label.startswith(("the real", "auth step")) else ns(value - previous)
        )
        rows.append([label, ns(value), step, ratio(value, floor)])
        if not label.startswith("auth step"):
            previous = value
    return table(["step", "ns / call", "this step", "vs floor"], rows)


def expiry_table(results: Sequence[LoadResult]) -> list[str]:
    ours = _ours(results)
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                f"{r.requests:,}",
                "-" if r.name.startswith("baseline") else ratio(r.requests, ours.requests),
                f"{r.calls:,}",
                ns(r.p(0.5)),
                ratio(r.p(0.5), ours.p(0.5)),
                ns(r.p(0.99)),
                ratio(r.p(0.99), ours.p(0.99)),
                ns(r.p(1.0)),
                secs(r.stall),
                f"{r.errors:,}",
            ]
        )
    headers = [
        "library",
        "token requests",
        "vs ours",
        "calls",
        "p50",
        "vs ours",
        "p99",
        "vs ours",
        "max",
        "worst loop stall",
        "caller errors",
    ]
    return table(headers, rows)


def outage_table(results: Sequence[LoadResult]) -> list[str]:
    ours = _ours(results)
    rows = []
    for r in results:
        rows.append(
            [
                r.name,
                f"{r.outage_requests:,}",
                ratio(r.outage_requests, ours.outage_requests),
                f"{r.outage_calls:,}",
                f"{r.outage_errors:,}",
                ns(r.outage_max_ns),
                secs(r.blocked_after),
                f"{r.errors_after:,}",
                secs(r.stall),
            ]
        )
    headers = [
        "library",
        "token requests during outage",
        "vs ours",
        "calls during outage",
        "caller errors during outage",
        "slowest call during outage",
        "outage callers blocked after recovery",
        "caller errors after recovery",
        "worst loop stall",
    ]
    return table(headers, rows)


def error_notes(results: Sequence[Any]) -> list[str]:
    notes = []
    for r in results:
        if r.error_types:
            kinds = ", ".join(f"{name} x{count:,}" for name, count in sorted(r.error_types.items()))
            where = ""
            if isinstance(r, StampedeResult):
                where = f" ({r.callers:,} callers" + (f", over {r.runs} runs)" if r.runs > 1 else ")")
            notes.append(f"- errors seen by {r.name}{where}: {kinds}")
    return notes


def headline(
    stampedes: Sequence[StampedeResult],
    hot: tuple[float, float, Sequence[HotPathResult]],
    expiry: Sequence[LoadResult],
    outage: Sequence[LoadResult],
) -> list[str]:
    """One line per peer: how many times more (or slower) it is than keyless-m2m."""
    floor, _, hot_results = hot
    lines = []
    ours_hot = _ours(hot_results)
    lines.append(
        f"- keyless-m2m hot path: {ns(ours_hot.token_ns)} per get_token(), "
        f"{ours_hot.token_ns / floor:.2f}x the `await noop()` floor ({ns(floor)}; target <= 1.5x)"
    )
    named: list[StampedeResult | LoadResult] = [*stampedes, *expiry]
    peers = list(dict.fromkeys(r.name for r in named if not r.name.startswith((OURS, "baseline"))))
    for peer in peers:
        parts = []
        for r in stampedes:
            if r.name != peer:
                continue
            ours = next(o for o in stampedes if o.name == OURS and o.callers == r.callers)
            parts.append(
                f"stampede {r.callers:,}: {ratio(r.requests, ours.requests)} token requests, "
                f"{ratio(r.seconds, ours.seconds)} time, {ratio(r.stall, ours.stall)} loop stall"
            )
        hot_peer = [h for h in hot_results if h.name == peer]
        if hot_peer:
            parts.append(
                f"hot path {ratio(hot_peer[0].token_ns, ours_hot.token_ns)} slower "
                f"(auth step {ratio(hot_peer[0].flow_ns, ours_hot.flow_ns)})"
            )
        exp_peer = [r for r in expiry if r.name == peer]
        if exp_peer:
            e, o = exp_peer[0], _ours(expiry)
            parts.append(
                f"expiry under load: {ratio(e.requests, o.requests)} token requests, "
                f"p99 {ratio(e.p(0.99), o.p(0.99))}, loop stall {ratio(e.stall, o.stall)}"
            )
        out_peer = [r for r in outage if r.name == peer]
        if out_peer:
            e, o = out_peer[0], _ours(outage)
            parts.append(
                f"outage: {ratio(e.outage_requests, o.outage_requests)} token requests, "
                f"{e.outage_errors:,} vs {o.outage_errors:,} caller errors"
            )
        lines.append(f"- vs {peer}: " + "; ".join(parts))
    return lines


def plot(results: Sequence[LoadResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantiles = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        values = [max(r.p(q), 1.0) / 1e3 for _, q in quantiles]  # µs
        xs = [x + (i - (len(results) - 1) / 2) * width for x in range(len(quantiles))]
        bars = ax.bar(xs, values, width, label=r.name)
        for bar, value in zip(bars, values, strict=True):
            label = f"{value:.1f}" if value < 1000 else f"{value / 1e3:.0f} ms"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, value),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
    ax.set_yscale("log")
    ax.set_xticks(range(len(quantiles)), [name for name, _ in quantiles])
    ax.set_ylabel("get_token() latency, µs (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
