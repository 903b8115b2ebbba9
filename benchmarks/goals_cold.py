"""Cold start and fleets of managers (issue 21): ``python -m benchmarks.goals_cold [--quick]``.

Four rows, each measured in fresh processes (median of 5 runs; 3 with ``--quick``), against
a token endpoint in ANOTHER process (the testing kit's ``AuthorizationServer``, plain http
on 127.0.0.1, answering every token request after 50 ms):

1. 100 cold callers of one ``TokenManager`` (``private_key_jwt``, a local ES256 key),
   from the moment they start (the manager entered with ``async with``) until all hold a
   token; the reference is the endpoint's latency as one warm ``httpx`` request sees it,
   measured in the same process, and the same callers with an ``http_client=`` given.
2. The event loop's stall over the same span, including ``async with`` (a ticker task
   sleeping 1 ms; the stall is its largest lateness); the same with ``http_client=``.
3. 20 managers (20 scopes) cold at once: construction, ``async with`` and 5 callers each,
   until all 100 hold a token; the stall over that span and the longest full collection
   of the cyclic GC in it. References: the endpoint's latency, and 20 bare httpx requests
   carrying pre-signed assertions in a fresh process of their own (``_bare_fleet``). Both
   sides run with the default GC and with ``gc.freeze()`` after the imports.
4. ``keyless-m2m token`` wall time (``python -m keyless_m2m token``, a fresh process),
   beside ``python -c pass``, the smallest httpx client that makes the same request
   (``python -c "import httpx; httpx.post(...)"``) and the import of the libraries the
   command needs (httpx, httpcore, anyio, cryptography), in the same run; CPU times too.

Ratios are computed within one run: the machine may be loaded (the load average is
printed), which inflates every absolute number; the goals' ratios are what to read.
``main(argv)`` prints a Markdown table; ``--json PATH`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .gcpasses import FullPasses, freeze_after_imports

LATENCY = 0.05
CLIENT_ID = "bench-cold"
SECRET = "bench-cold-secret-value"
ROOT = Path(__file__).resolve().parents[1]

# -- the token endpoint, in its own process -------------------------------------------------------


def _serve(workdir: str) -> None:
    """``--serve DIR``: write a key, register it, print the token endpoint URL, serve until
    stdin closes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwcrypto import jwk

    from keyless_m2m.testing.authorization_server import AuthorizationServer

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    Path(workdir, "key.pem").write_bytes(pem)
    public = json.loads(jwk.JWK.from_pyca(key.public_key()).export_public())
    server = AuthorizationServer(latency=LATENCY, expires_in=3600)
    server._httpd.socket.listen(1024)  # a production-like backlog (see benchmarks.scenarios)
    server.register_client(CLIENT_ID, client_secret=SECRET, public_jwk=public)
    with server:
        print(f"{server.url}/token", flush=True)
        sys.stdin.read()


class Endpoint:
    """The server process, stopped by PID on exit."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.goals_cold", "--serve", workdir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError("the token endpoint process did not start")

    @property
    def key(self) -> str:
        return str(Path(self.workdir, "key.pem"))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)
    return env


# -- rows 1-3: a worker process -----------------------------------------------------------------


async def _ticker(state: dict[str, Any]) -> None:
    import anyio

    while not state["stop"]:
        before, cpu = time.perf_counter(), time.thread_time()
        await anyio.sleep(0.001)
        state["stall"] = max(state["stall"], time.perf_counter() - before - 0.001)
        # What the loop's thread itself computed between two ticks: the stall the code
        # causes, without the time the OS gave the CPU to other processes.
        state["cpu_stall"] = max(state["cpu_stall"], time.thread_time() - cpu)


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    import anyio
    import httpx

    from keyless_m2m import PrivateKeyJWT, TokenManager
    from keyless_m2m.signers import LocalSigner

    url, managers_n, callers = config["url"], config["managers"], config["callers"]
    state: dict[str, Any] = {"stop": False, "stall": 0.0, "cpu_stall": 0.0}
    signer = LocalSigner.from_pem_file(config["key"])
    given = httpx.AsyncClient() if config["given"] else None
    result: dict[str, Any] = {}
    _settle_gc(config)
    collections = FullPasses()
    async with anyio.create_task_group() as group:
        group.start_soon(_ticker, state)
        await anyio.sleep(0.01)  # the ticker runs
        state["stall"] = state["cpu_stall"] = 0.0
        collections.start()
        started = time.perf_counter()
        managers = [
            TokenManager(url, PrivateKeyJWT(CLIENT_ID, signer), scope=f"s{i}", http_client=given)
            for i in range(managers_n)
        ]
        async with managers[0] if managers_n == 1 else _all(managers):
            entered = time.perf_counter()

            async def call(manager: TokenManager) -> None:
                assert (await manager.get_token()).value

            async with anyio.create_task_group() as callers_group:
                for manager in managers:
                    for _ in range(callers):
                        callers_group.start_soon(call, manager)
            done = time.perf_counter()
            collections.stop()
        state["stop"] = True
    result.update(
        callers_s=done - entered,
        total_s=done - started,
        enter_s=entered - started,
        stall_s=state["stall"],
        cpu_stall_s=state["cpu_stall"],
        full_gc_s=collections.longest,
    )
    # The floor: one token request on a warm client (connection made), as the endpoint answers it.
    async with httpx.AsyncClient() as http:
        form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
        await http.post(url, data=form)
        floors = []
        for _ in range(3):
            before = time.perf_counter()
            (await http.post(url, data=form)).raise_for_status()
            floors.append(time.perf_counter() - before)
        result["floor_s"] = min(floors)
    if given is not None:
        await given.aclose()
    await signer.aclose()
    return result


async def _post(client: Any, url: str, form: dict[str, str]) -> None:
    (await client.post(url, data=form)).raise_for_status()


def _settle_gc(config: dict[str, Any]) -> None:
    if config.get("freeze"):
        freeze_after_imports()


async def _bare_fleet(config: dict[str, Any]) -> dict[str, Any]:
    """The floor of a fleet, in a fresh process as cold as a worker's: as many concurrent
    token requests as there are managers, each on its own client (built beforehand) and a
    new connection, each carrying a private_key_jwt assertion signed beforehand, so the
    endpoint does the same work as for the managers. The library is imported too (the
    same heap for the collector) but does nothing in the span."""
    import anyio
    import httpx

    import keyless_m2m.manager  # noqa: F401 - the same imports as a worker
    from keyless_m2m import PrivateKeyJWT
    from keyless_m2m._secret import reveal
    from keyless_m2m.signers import LocalSigner

    url, count = config["url"], config["managers"]
    signer = LocalSigner.from_pem_file(config["key"])
    auth = PrivateKeyJWT(CLIENT_ID, signer, audience_policy="token_endpoint")
    forms = []
    for _ in range(count):
        prepared = await auth.prepare(url)
        forms.append({"grant_type": "client_credentials", **{k: reveal(v) for k, v in prepared.form.items()}})
    clients = [httpx.AsyncClient() for _ in range(count)]
    _settle_gc(config)
    collections = FullPasses()
    state: dict[str, Any] = {"stop": False, "stall": 0.0, "cpu_stall": 0.0}
    async with anyio.create_task_group() as ticking:
        ticking.start_soon(_ticker, state)
        await anyio.sleep(0.01)
        state["stall"] = state["cpu_stall"] = 0.0
        collections.start()
        before = time.perf_counter()
        async with anyio.create_task_group() as fleet:
            for client, form in zip(clients, forms, strict=True):
                fleet.start_soon(_post, client, url, form)
        total = time.perf_counter() - before
        collections.stop()
        state["stop"] = True
    for client in clients:
        await client.aclose()
    await signer.aclose()
    return {"total_s": total, "cpu_stall_s": state["cpu_stall"], "full_gc_s": collections.longest}


class _all:
    """``async with`` over several managers."""

    def __init__(self, managers: Sequence[Any]) -> None:
        from contextlib import AsyncExitStack

        self.managers = managers
        self.stack = AsyncExitStack()

    async def __aenter__(self) -> None:
        for manager in self.managers:
            await self.stack.enter_async_context(manager)

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()


def _run_worker(config: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.goals_cold", "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=_env(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(runs: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


# -- row 4: the command ---------------------------------------------------------------------------


def _wall(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of ``argv``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = time.perf_counter()
    subprocess.run(argv, capture_output=True, timeout=60, cwd=ROOT, env=env or _env(), check=True)
    wall = time.perf_counter() - before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)


def _command_rows(endpoint: Endpoint, runs: int) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "keyless_m2m",
        "token",
        "--token-endpoint",
        endpoint.url,
        "--client-id",
        CLIENT_ID,
        "--signer",
        Path(endpoint.key).as_uri(),
    ]
    httpx_post = (
        f"import httpx; httpx.post({endpoint.url!r}, data={{'grant_type': 'client_credentials', "
        f"'client_id': {CLIENT_ID!r}, 'client_secret': {SECRET!r}}}).raise_for_status()"
    )
    # The floor of any command built on the same libraries: importing them (trio and httpx's
    # own command line skipped, as the command does) and nothing else.
    deps = (
        "import sys; sys.modules['trio'] = None; sys.modules['httpx._main'] = None; "
        "import anyio, httpcore, httpx, cryptography.hazmat.primitives.serialization, "
        "cryptography.hazmat.primitives.asymmetric.ec"
    )
    argvs = {
        "ours": command,
        "deps": [sys.executable, "-c", deps],
        "pass": [sys.executable, "-c", "pass"],
        "httpx": [sys.executable, "-c", httpx_post],
    }
    samples: dict[str, list[float]] = {}
    _wall(command)  # the page cache warm, as for a second run of the command
    for _ in range(runs):  # interleaved: the machine's load touches each alike
        for name, argv in argvs.items():
            wall, cpu = _wall(argv)
            samples.setdefault(name, []).append(wall)
            samples.setdefault(f"{name}_cpu", []).append(cpu)
    return {name: statistics.median(values) for name, values in samples.items()}


# -- the table ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.1f} ms"


def measure(runs: int) -> dict[str, Any]:
    from .report import compile_bytecode  # here: the workers import this module, and stay cold

    compile_bytecode()
    with tempfile.TemporaryDirectory() as workdir:
        endpoint = Endpoint(workdir)
        try:
            base = {"url": endpoint.url, "key": endpoint.key}
            one = [_run_worker({**base, "managers": 1, "callers": 100, "given": False}) for _ in range(runs)]
            given = [_run_worker({**base, "managers": 1, "callers": 100, "given": True}) for _ in range(runs)]
            fleets: dict[str, list[dict[str, Any]]] = {}
            for _ in range(runs):  # interleaved: the machine's load touches each alike
                for freeze in (False, True):
                    fleet_config = {**base, "managers": 20, "callers": 5, "given": False, "freeze": freeze}
                    for kind in ("ours", "bare"):
                        run = _run_worker({**fleet_config, "bare": kind == "bare"})
                        fleets.setdefault(f"{kind}{'_frozen' if freeze else ''}", []).append(run)
            command = _command_rows(endpoint, runs)
        finally:
            endpoint.close()
    return {"one": one, "given": given, "fleets": fleets, "command": command, "load": os.getloadavg()}


def table(results: dict[str, Any]) -> list[str]:
    one, given, fleets, command = results["one"], results["given"], results["fleets"], results["command"]
    floor = _median(one + given + fleets["ours"] + fleets["ours_frozen"], "floor_s")
    rows: list[tuple[str, str, str, str, str, bool]] = []
    ours = _median(one, "callers_s")
    peer = _median(given, "callers_s")
    rows.append(
        (
            "100 cold callers, one manager, until all hold a token",
            _ms(ours),
            f"endpoint {_ms(floor)}; with http_client= {_ms(peer)}",
            f"{ours / floor:.2f}x",
            "<= 1.2x the endpoint's latency",
            ours <= 1.2 * floor,
        )
    )
    stall, stall_given = _median(one, "cpu_stall_s"), _median(given, "cpu_stall_s")
    wall_stall, wall_given = _median(one, "stall_s"), _median(given, "stall_s")
    rows.append(
        (
            "event-loop stall during that first fetch (incl. async with): loop CPU (wall lateness)",
            f"{_ms(stall)} ({_ms(wall_stall)})",
            f"with http_client= {_ms(stall_given)} ({_ms(wall_given)})",
            f"{stall / stall_given:.1f}x" if stall_given else "-",
            "<= 5 ms",
            stall <= 0.005,
        )
    )
    for suffix, how in (("", "default GC"), ("_frozen", "`gc.collect(); gc.freeze()` after the imports")):
        ours_fleet, bare_fleet = fleets[f"ours{suffix}"], fleets[f"bare{suffix}"]
        total, stall = _median(ours_fleet, "total_s"), _median(ours_fleet, "cpu_stall_s")
        bare_total, bare_stall = _median(bare_fleet, "total_s"), _median(bare_fleet, "cpu_stall_s")
        full_gc, bare_gc = _median(ours_fleet, "full_gc_s"), _median(bare_fleet, "full_gc_s")
        rows.append(
            (
                f"20 managers (20 scopes) cold at once, construction until all hold a token ({how})",
                f"{_ms(total)}, stall {_ms(stall)} (longest full GC pass in it {_ms(full_gc)})",
                f"endpoint {_ms(floor)}; 20 bare httpx requests with signed assertions, new connections,"
                f" fresh process: {_ms(bare_total)}, stall {_ms(bare_stall)} (full GC {_ms(bare_gc)})",
                f"{total / floor:.2f}x endpoint, {total / bare_total:.2f}x the bare requests;"
                f" stall {stall / bare_stall:.1f}x"
                if bare_stall
                else f"{total / floor:.2f}x endpoint",
                "<= 1.2x the endpoint's latency, stall <= 10 ms",
                total <= 1.2 * floor and stall <= 0.010,
            )
        )
    rows.append(
        (
            "`keyless-m2m token` wall time (CPU time)",
            f"{_ms(command['ours'])} ({_ms(command['ours_cpu'])})",
            f"`python -c pass` {_ms(command['pass'])} ({_ms(command['pass_cpu'])}); "
            f"httpx.post {_ms(command['httpx'])} ({_ms(command['httpx_cpu'])}); importing httpx, "
            f"httpcore, anyio, cryptography only {_ms(command['deps'])} ({_ms(command['deps_cpu'])})",
            f"{command['ours'] / command['pass']:.1f}x pass, "
            f"{command['ours'] / command['httpx']:.2f}x httpx, "
            f"{command['ours'] / command['deps']:.2f}x the imports",
            "<= 150 ms",
            command["ours"] <= 0.150,
        )
    )
    load = ", ".join(f"{value:.1f}" for value in results["load"])
    lines = [
        f"Load average (1, 5, 15 min) at the end: {load} on {os.cpu_count()} CPUs.",
        "",
        "| row | ours | reference (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {'yes' if r[5] else 'no'} |" for r in rows]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.goals_cold", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3 runs per row instead of 5")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return 0
    if args.worker:
        import anyio

        config = json.loads(args.worker)
        print(json.dumps(anyio.run(_bare_fleet if config.get("bare") else _worker, config)))
        return 0
    results = measure(3 if args.quick else 5)
    print("\n".join(table(results)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
