"""The requests integration next to requests-oauth2client: ``python -m benchmarks.integrations``.

Both authenticate a ``requests`` call with a client-credentials token from the embedded
authorization server on loopback (client_secret_basic for both, so that only the auth
differs), in the same process and run:

1. **the auth step per request**: what the auth adds to one request once a token is
   cached: ``auth(prepared)`` and then the ``response`` hooks a ``Session`` runs on the
   200 answer (keyless-m2m's :class:`~keyless_m2m.integrations.requests.BearerAuth`
   registers one, to see a 401 ``invalid_token``; requests-oauth2client's
   ``OAuth2ClientCredentialsAuth`` registers none), median and p95 per request, and the
   medians of its two parts;
2. **a whole request**: ``session.get()`` to a loopback resource server, median per request;
3. **a cold start under threads**: 16 threads through one ``Session`` at once, before any
   token is cached: how many token requests reach the server (a count, not a time).

Prints Markdown tables with ``vs ours`` ratios (the peer's figure divided by ours)::

    python -m benchmarks.integrations [--quick] [--json PATH]

Every server listens on loopback only and is stopped at the end. Times are measured,
never asserted: they depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import ThreadingHTTPServer
from time import perf_counter_ns
from typing import Any

import requests
from requests.hooks import dispatch_hook

from keyless_m2m import ClientSecretBasic, SyncTokenManager
from keyless_m2m.integrations.requests import BearerAuth
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.bearer_resource_server import BearerResourceServer
from tests.threads import at_once

from .report import environment, ns, progress, ratio, table, versions

OURS = "keyless-m2m BearerAuth"
PEER = "requests-oauth2client OAuth2ClientCredentialsAuth"
CLIENT_ID = "bench"
CLIENT_SECRET = "bench-client-secret-value"  # a loopback test client
THREADS = 16


@dataclass
class Result:
    name: str
    step: list[int] = field(default_factory=list)  # ns per auth step
    call: list[int] = field(default_factory=list)  # of which auth(prepared)
    hooks: list[int] = field(default_factory=list)  # of which the response hooks
    request: list[int] = field(default_factory=list)  # ns per session.get()
    cold_token_requests: int = 0
    cold_errors: int = 0
    ok: int = 0

    @property
    def step_median(self) -> float:
        return statistics.median(self.step)

    @property
    def step_p95(self) -> float:
        return statistics.quantiles(self.step, n=20)[-1]

    @property
    def request_median(self) -> float:
        return statistics.median(self.request)


class _Listener(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class _AuthorizationServer(AuthorizationServer):
    """The embedded server with a listen backlog of 128: the default (5) resets connections
    when 16 threads' token requests arrive at once, a fault of the test server, not of a peer."""

    def _listen(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        return _Listener(address, self._handler)


@contextmanager
def servers() -> Iterator[tuple[AuthorizationServer, BearerResourceServer]]:
    with _AuthorizationServer(latency=0.05) as authorization:
        authorization.register_client(CLIENT_ID, client_secret=CLIENT_SECRET)
        with BearerResourceServer(known=lambda: authorization.issued) as api:
            yield authorization, api


def ours(authorization: AuthorizationServer) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A new auth of ours (each with its own manager, so each starts cold), and its close."""
    tokens = SyncTokenManager(authorization.token_endpoint, ClientSecretBasic(CLIENT_ID, CLIENT_SECRET))
    return (lambda: BearerAuth(tokens)), tokens.close


def peer(authorization: AuthorizationServer) -> tuple[Callable[[], Any], Callable[[], None]] | None:
    try:
        import requests_oauth2client as roc
    except ImportError:
        return None
    client = roc.OAuth2Client(
        token_endpoint=authorization.token_endpoint,
        auth=(CLIENT_ID, CLIENT_SECRET),
        testing=True,  # the loopback server is http://
    )
    return (lambda: roc.OAuth2ClientCredentialsAuth(client)), lambda: None


def _answer_to(prepared: requests.PreparedRequest) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.request = prepared
    response._content = b"{}"
    return response


def steps(auth: Any, template: requests.PreparedRequest, count: int, into: Result) -> None:
    """``count`` auth steps: ``auth(prepared)``, then the response hooks on a 200 answer."""
    answer = _answer_to(template)
    for _ in range(count):
        copy = template.copy()
        t0 = perf_counter_ns()
        prepared = auth(copy)
        t1 = perf_counter_ns()
        dispatch_hook("response", prepared.hooks, answer)
        t2 = perf_counter_ns()
        into.step.append(t2 - t0)
        into.call.append(t1 - t0)
        into.hooks.append(t2 - t1)


def cold_start(
    make: Callable[[], Any], authorization: AuthorizationServer, api: BearerResourceServer
) -> tuple[int, int]:
    """(token requests, failed calls) when :data:`THREADS` threads share one new auth on one Session."""
    before = authorization.token_requests
    with requests.Session() as session:
        session.auth = make()
        _, errors = at_once(
            lambda _: session.get(f"{api.url}/pockets", timeout=10).raise_for_status(), THREADS
        )
    return authorization.token_requests - before, len(errors)


def run(sizes: dict[str, int]) -> list[Result]:
    """Both contenders in turns (a block of auth steps each, then one request each, per
    round), so that a slower moment of a shared machine falls on both."""
    setups = {OURS: ours, PEER: peer}
    with servers() as (authorization, api):
        contenders = {}
        for name, setup in setups.items():
            contender = setup(authorization)
            if contender is None:
                progress(f"{name}: not installed (the bench dependency group), skipped")
            else:
                contenders[name] = contender
        results = {name: Result(name) for name in contenders}
        template = requests.Request("GET", f"{api.url}/pockets").prepare()
        sessions = {name: requests.Session() for name in contenders}
        try:
            for name, (make, _) in contenders.items():
                sessions[name].auth = make()
                sessions[name].get(template.url or "", timeout=10).raise_for_status()  # the token, once
            progress(f"{sizes['rounds']} rounds of {sizes['block']:,} auth steps and one request each")
            for _ in range(sizes["rounds"]):
                for name, session in sessions.items():
                    steps(session.auth, template, sizes["block"], results[name])
                for _ in range(sizes["requests"]):
                    for name, session in sessions.items():
                        t0 = perf_counter_ns()
                        response = session.get(template.url or "", timeout=10)
                        results[name].request.append(perf_counter_ns() - t0)
                        results[name].ok += response.status_code == 200
        finally:
            for session in sessions.values():
                session.close()
            for _, close in contenders.values():
                close()
        for name in contenders:
            progress(f"{name}: {THREADS} threads, cold")
            fresh = setups[name](authorization)  # cold: a new token source
            assert fresh is not None
            make, close = fresh
            try:
                results[name].cold_token_requests, results[name].cold_errors = cold_start(
                    make, authorization, api
                )
            finally:
                close()
    return list(results.values())


def report(results: list[Result]) -> list[str]:
    mine = results[0]
    rows = [
        [
            r.name,
            ns(r.step_median),
            ns(r.step_p95),
            ratio(r.step_median, mine.step_median),
            ns(statistics.median(r.call)),
            ns(statistics.median(r.hooks)),
            ns(r.request_median),
            ratio(r.request_median, mine.request_median),
            f"{r.ok:,} / {len(r.request):,}",
            f"{r.cold_token_requests}" + (f" ({r.cold_errors} calls failed)" if r.cold_errors else ""),
        ]
        for r in results
    ]
    return table(
        [
            "auth",
            "auth step, median",
            "p95",
            "vs ours",
            "of which auth()",
            "of which hooks",
            "session.get(), median",
            "vs ours",
            "200s",
            f"token requests, {THREADS} threads cold",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.integrations", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    parser.add_argument("--json", metavar="PATH", help="also write every sample as JSON")
    args = parser.parse_args(argv)
    sizes = (
        {"rounds": 5, "block": 400, "requests": 40}
        if args.quick
        else {"rounds": 20, "block": 1_000, "requests": 50}
    )
    results = run(sizes)
    lines = [
        "## requests: keyless-m2m next to requests-oauth2client",
        "",
        *report(results),
        "",
        f"Versions: {versions(('keyless-m2m', 'requests', 'requests-oauth2client'))}.",
        *environment(),
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([asdict(r) for r in results], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
