"""What a DPoP proof costs, per proof-key backend: the measurements behind
``python -m benchmarks.dpop`` (which prints them as the tables in ``docs/dpop.md``) and
``tests/integration/signers/test_dpop_costs.py`` (which runs them at a tiny size and
asserts their counts, never their times).

Three measurements, each returning the per-call times (ns) with the counts that say what
was done:

- :func:`proof_cost`: ``DPoPKey.proof()`` alone (one signature by the proof key);
- :func:`request_cost`: one API request through ``tokens.auth()`` with httpx, DPoP (a fresh
  proof per request) next to the same request with a Bearer token (no proof), against a
  :class:`~tests.dpop_resource_server.DPoPResourceServer` that verifies every proof;
- :func:`fetch_cost`: one token request with a proof next to one without, at the embedded
  authorization server (which verifies the proof too).

:class:`Servers` holds the authorization server (``dpop="optional"``, so it issues both
kinds of token) and the resource server (``allow_bearer=True``) that the last two share.
No nonce is demanded: the steady state, one proof per request, is what is measured.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter_ns

import httpx

from keyless_m2m import ClientSecretBasic, TokenManager
from keyless_m2m.dpop import DPoPKey
from keyless_m2m.endpoint import TokenEndpoint
from keyless_m2m.testing.authorization_server import AuthorizationServer
from tests.dpop_resource_server import DPoPResourceServer

__all__ = ["Costs", "Servers", "fetch_cost", "proof_cost", "request_cost", "running_servers"]

CLIENT_ID = "dpop-bench"
CLIENT_SECRET = "dpop-bench-secret-0123456789"
PROOF_URL = "https://api.example/v2/pockets/"
WARM_UP = 2  # untimed calls first: SDK clients connect, the public key is fetched once


@dataclass
class Costs:
    """Per-call times of one measurement (``samples``, ns) and, for the ones with a
    baseline, the same call without DPoP (``baseline``); the counts: ``calls`` timed calls
    made, ``proofs`` proofs signed during them (the key's counter or ``stats.dpop_proofs``),
    ``verified`` proofs the server accepted during them, ``baseline_ok`` baseline calls
    that succeeded. ``step``/``baseline_step``: the client's own per-request work alone,
    without the round trip (the ``httpx.Auth`` flow up to the request it sends), and
    ``step_proofs`` the proofs that took."""

    backend: str
    samples: list[int] = field(default_factory=list)
    baseline: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    baseline_step: list[int] = field(default_factory=list)
    calls: int = 0
    proofs: int = 0
    verified: int = 0
    baseline_ok: int = 0
    step_proofs: int = 0

    @staticmethod
    def _quantile(values: list[int], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples)) if self.samples else float("nan")

    @property
    def p95(self) -> float:
        return self._quantile(self.samples, 0.95)

    @property
    def baseline_median(self) -> float:
        return float(statistics.median(self.baseline)) if self.baseline else float("nan")

    @property
    def baseline_p95(self) -> float:
        return self._quantile(self.baseline, 0.95)

    @property
    def added(self) -> float:
        """What DPoP adds to the median call (the median minus the baseline median)."""
        return self.median - self.baseline_median

    @property
    def step_median(self) -> float:
        return float(statistics.median(self.step)) if self.step else float("nan")

    @property
    def baseline_step_median(self) -> float:
        return float(statistics.median(self.baseline_step)) if self.baseline_step else float("nan")


@dataclass
class Servers:
    authorization: AuthorizationServer
    api: DPoPResourceServer

    @property
    def api_url(self) -> str:
        return self.api.url + "/v2/pockets/"

    def client_auth(self) -> ClientSecretBasic:
        return ClientSecretBasic(CLIENT_ID, CLIENT_SECRET)


@contextlib.contextmanager
def running_servers() -> Iterator[Servers]:
    """The loopback authorization server and resource server, stopped on exit."""
    with AuthorizationServer(dpop="optional") as authorization:
        authorization.register_client(CLIENT_ID, client_secret=CLIENT_SECRET)
        with DPoPResourceServer(jkt_of=authorization.jkt_of, allow_bearer=True) as api:
            yield Servers(authorization, api)


async def proof_cost(backend: str, key: DPoPKey, n: int) -> Costs:
    """``n`` calls of ``key.proof()`` (with ``ath``, as for an API request), one by one."""
    for _ in range(WARM_UP):
        await key.proof("GET", PROOF_URL, access_token="warm-up")
    costs = Costs(backend)
    before = key.proofs
    for _ in range(n):
        t0 = perf_counter_ns()
        await key.proof("GET", PROOF_URL, access_token="an-access-token")
        costs.samples.append(perf_counter_ns() - t0)
    costs.calls = n
    costs.proofs = key.proofs - before
    return costs


async def _timed_gets(http: httpx.AsyncClient, url: str, n: int, samples: list[int]) -> int:
    ok = 0
    for _ in range(n):
        t0 = perf_counter_ns()
        response = await http.get(url)
        samples.append(perf_counter_ns() - t0)
        ok += response.status_code == 200
    return ok


async def _timed_steps(auth: httpx.Auth, url: str, n: int, samples: list[int]) -> None:
    """The per-request ``httpx.Auth`` step alone: the flow up to the request it yields."""
    request = httpx.Request("GET", url)
    for _ in range(n):
        t0 = perf_counter_ns()
        flow = auth.async_auth_flow(request)
        await flow.__anext__()
        await flow.aclose()
        samples.append(perf_counter_ns() - t0)


async def request_cost(backend: str, key: DPoPKey, n: int, servers: Servers) -> Costs:
    """``n`` GETs through ``tokens.auth()`` with a DPoP token bound to ``key``, then ``n``
    with a Bearer token from a manager without ``dpop=``, each client on its own
    keep-alive connection; the tokens are fetched (and the connections opened) first.
    Then ``n`` of each ``auth()`` step alone (``step``, ``baseline_step``)."""
    costs = Costs(backend)
    url = servers.api_url
    async with TokenManager(servers.authorization.token_endpoint, servers.client_auth(), dpop=key) as tokens:
        token = await tokens.get_token()
        assert token.is_dpop, "the authorization server did not bind the token"
        async with httpx.AsyncClient(auth=tokens.auth()) as http:
            for _ in range(WARM_UP):
                (await http.get(url)).raise_for_status()
            proofs, verified = tokens.stats.dpop_proofs, servers.api.proofs_verified
            await _timed_gets(http, url, n, costs.samples)
            costs.proofs = tokens.stats.dpop_proofs - proofs
            costs.verified = servers.api.proofs_verified - verified
        proofs = tokens.stats.dpop_proofs
        await _timed_steps(tokens.auth(), url, n, costs.step)
        costs.step_proofs = tokens.stats.dpop_proofs - proofs
    async with TokenManager(servers.authorization.token_endpoint, servers.client_auth()) as bearer:
        assert not (await bearer.get_token()).is_dpop
        async with httpx.AsyncClient(auth=bearer.auth()) as http:
            for _ in range(WARM_UP):
                (await http.get(url)).raise_for_status()
            costs.baseline_ok = await _timed_gets(http, url, n, costs.baseline)
        await _timed_steps(bearer.auth(), url, n, costs.baseline_step)
    costs.calls = n
    return costs


async def fetch_cost(backend: str, key: DPoPKey, n: int, servers: Servers) -> Costs:
    """``n`` token requests with a proof from ``key`` (``TokenEndpoint.request()``: no
    cache in the way), then ``n`` without DPoP; the same client authentication for both."""
    costs = Costs(backend)
    server = servers.authorization
    endpoint = TokenEndpoint(server.token_endpoint, servers.client_auth(), dpop=key)
    try:
        for _ in range(WARM_UP):
            await endpoint.request()
        proofs, verified = endpoint.stats.dpop_proofs, server.dpop_proofs_verified
        for _ in range(n):
            t0 = perf_counter_ns()
            token = await endpoint.request()
            costs.samples.append(perf_counter_ns() - t0)
            assert token.is_dpop
        costs.proofs = endpoint.stats.dpop_proofs - proofs
        costs.verified = server.dpop_proofs_verified - verified
    finally:
        await endpoint.aclose()
    plain = TokenEndpoint(server.token_endpoint, servers.client_auth())
    try:
        for _ in range(WARM_UP):
            await plain.request()
        for _ in range(n):
            t0 = perf_counter_ns()
            token = await plain.request()
            costs.baseline.append(perf_counter_ns() - t0)
            costs.baseline_ok += not token.is_dpop
    finally:
        await plain.aclose()
    costs.calls = n
    return costs
