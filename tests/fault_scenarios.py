"""The fault-injection scenarios at a loopback token endpoint, shared by
``tests/integration/manager/test_faults.py`` (which asserts their counts on asyncio and trio)
and ``python -m benchmarks.faults`` (which prints them as the table in
``docs/reliability.md``).

Each scenario starts a real :class:`~keyless_m2m.testing.authorization_server.AuthorizationServer`
on 127.0.0.1, points a :class:`~keyless_m2m.TokenManager` at it, injects one fault (a
refused connection, a reset mid-body, a stalled server, a 503 storm, a flapping server, a
server clock 10 minutes off), and returns an :class:`Outcome`: what callers saw, how many
token requests the client made (and how many reached the server), and how long recovery
took once the fault ended. The client runs with test-sized knobs (``RIG_OPTIONS``): 4
attempts per fetch, 50 ms first backoff, a 250 ms read timeout, 50-200 ms failure backoff
in the manager.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import anyio
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import AccessToken, KeylessM2MError, PrivateKeyJWT, TokenManager
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault

CALLERS = 50
RIG_OPTIONS: dict[str, Any] = {
    "max_attempts": 4,
    "backoff": 0.05,
    "max_backoff": 0.2,
    "deadline": 5.0,
    "timeout": 0.25,
    "failure_backoff": 0.05,
    "max_failure_backoff": 0.2,
}


@dataclass
class Outcome:
    """What one scenario did. ``requests``: HTTP attempts the client made; ``arrived``:
    token requests the server received; ``errors``: exception class -> callers that got it;
    ``recovery``: seconds from the end of the fault to the next token a caller got (None:
    callers never lost service)."""

    fault: str
    injected: str
    callers: int = 0
    requests: int = 0
    arrived: int = 0
    flights: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    served_stale: int = 0
    recovery: float | None = None
    sleeps: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Rig:
    server: AuthorizationServer
    tokens: TokenManager
    sleeps: list[float]

    def outcome(self, fault: str, injected: str, callers: int, errors: Counter[str], **kw: Any) -> Outcome:
        stats = self.tokens.stats
        return Outcome(
            fault=fault,
            injected=injected,
            callers=callers,
            requests=stats.requests,
            arrived=self.server.token_requests,
            flights=stats.refreshes,
            failures=stats.failures,
            errors=dict(errors),
            served_stale=stats.served_stale,
            sleeps=list(self.sleeps),
            statuses=list(self.server.statuses),
            **kw,
        )


@asynccontextmanager
async def rig(*, expires_in: float = 3600, **options: Any) -> AsyncIterator[Rig]:
    """A server with one private_key_jwt client and a manager in ``async with``."""
    signer = LocalSigner(ec.generate_private_key(ec.SECP256R1()))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await anyio.sleep(seconds)

    with AuthorizationServer(expires_in=expires_in) as server:
        server.register_client("svc", public_jwk=(await signer.describe()).public_jwk)
        manager = TokenManager(
            server.token_endpoint, PrivateKeyJWT("svc", signer), sleep=sleep, **{**RIG_OPTIONS, **options}
        )
        async with manager as tokens:
            yield Rig(server, tokens, sleeps)


async def callers(tokens: TokenManager, n: int = CALLERS) -> tuple[list[AccessToken], Counter[str]]:
    """``n`` concurrent ``get_token()`` calls: the tokens they got, the errors by type."""
    got: list[AccessToken] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        try:
            got.append(await tokens.get_token())
        except KeylessM2MError as exc:
            errors[type(exc).__name__] += 1

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return got, errors


async def until_served(tokens: TokenManager, *, unlike: AccessToken | None = None) -> float:
    """Seconds until ``get_token()`` returns a token (other than ``unlike``)."""
    started = time.monotonic()
    with anyio.fail_after(30):
        while True:
            try:
                token = await tokens.get_token()
                if unlike is None or token.value != unlike.value:
                    return time.monotonic() - started
            except KeylessM2MError:
                pass
            await anyio.sleep(0.005)


async def outage(
    tokens: TokenManager, end: Callable[[], object], batches: int
) -> tuple[Counter[str], int, float]:
    """``batches`` x ``CALLERS`` callers while a fault lasts (the later batches inside the
    manager's failure backoff), then ``end()`` it: the callers' errors by type, the HTTP
    attempts made during the fault, and the recovery time (:func:`until_served`)."""
    errors: Counter[str] = Counter()
    for _ in range(batches):
        errors.update((await callers(tokens))[1])
    attempts = tokens.stats.requests
    end()
    return errors, attempts, await until_served(tokens)


# -- the scenarios ---------------------------------------------------------------------------


async def connection_refused() -> Outcome:
    async with rig() as r:
        r.server.stop()
        errors, attempts, recovery = await outage(r.tokens, r.server.start, batches=2)
        return r.outcome(
            "connection refused (cold)",
            "listener closed; 2 x 50 callers; listener back",
            2 * CALLERS,
            errors,
            recovery=recovery,
            notes=f"{attempts} attempts while down",
        )


async def connection_refused_warm() -> Outcome:
    # refresh_window = the lifetime: every call after the first starts a background refresh.
    async with rig(refresh_window=3600) as r:
        first = await r.tokens.get_token()
        # The cold fetch may have been retried (a read timeout on a loaded machine): the
        # outage's own requests are counted from here.
        before = r.tokens.stats.requests
        r.server.stop()
        errors: Counter[str] = Counter()
        served = 0
        with anyio.fail_after(30):
            while r.tokens.stats.failures < 3:
                got, batch = await callers(r.tokens, 10)
                errors.update(batch)
                served += sum(t.value == first.value for t in got)
                await anyio.sleep(0.01)
            # The last batch may have started one more background refresh after the third
            # failure: let it fail too before the listener is back, so that every failed
            # flight made all its attempts (flights started = the first one + failures).
            while r.tokens.stats.refreshes > r.tokens.stats.failures + 1:
                await anyio.sleep(0.01)
        during = {"requests": r.tokens.stats.requests - before, "failures": r.tokens.stats.failures}
        r.server.start()
        recovery = await until_served(r.tokens, unlike=first)
        return r.outcome(
            "connection refused (token cached)",
            "listener closed during background refreshes",
            served + errors.total(),
            errors,
            recovery=recovery,
            notes=f"{served} calls served the cached token",
            extra={"outage_requests": during["requests"], "outage_failures": during["failures"]},
        )


async def reset_mid_body() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=None, reset_after=10, count=2))
        _, errors = await callers(r.tokens)
        return r.outcome(
            "reset mid-body", "2 answers cut after 10 bytes (TCP RST)", CALLERS, errors, notes="retried"
        )


async def slow_headers() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=None, delay=5.0))
        _, errors = await callers(r.tokens)
        return r.outcome(
            "slow headers", "no status line for 5 s (read timeout 0.25 s)", CALLERS, errors, notes="retried"
        )


async def slow_body() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=None, slow_body=5.0))
        _, errors = await callers(r.tokens)
        return r.outcome("slow body", "half the body, then 5 s of silence", CALLERS, errors, notes="retried")


async def storm_503() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=503, body="<html>busy</html>", count=None))
        errors, attempts, recovery = await outage(r.tokens, r.server.clear_faults, batches=2)
        return r.outcome(
            "503 storm, no Retry-After",
            "every answer 503; 2 x 50 callers; storm ends",
            2 * CALLERS,
            errors,
            recovery=recovery,
            notes=f"{attempts} attempts during the storm",
        )


async def storm_503_retry_after() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=503, headers={"Retry-After": "1"}, count=1))
        _, errors = await callers(r.tokens)
        return r.outcome(
            "503 with Retry-After: 1",
            "one 503 asking for 1 s",
            CALLERS,
            errors,
            notes="waited " + ", ".join(f"{s:.2f} s" for s in r.sleeps),
        )


async def storm_503_retry_after_long() -> Outcome:
    async with rig() as r:
        r.server.fail_next(Fault(status=503, headers={"Retry-After": "120"}, count=None))
        errors, _, recovery = await outage(r.tokens, r.server.clear_faults, batches=1)
        return r.outcome(
            "503 storm, Retry-After: 120",
            "Retry-After beyond the 5 s deadline",
            CALLERS,
            errors,
            recovery=recovery,
            notes="gave up at once, no waiting past the deadline",
        )


async def flapping() -> Outcome:
    # Each round invalidates on purpose to force the next fetch: no invalidation floor.
    async with rig(min_invalidation_interval=0) as r:
        r.server.fault_policy = lambda n: Fault(500, body={"error": "server_error"}) if n % 2 else None
        errors: Counter[str] = Counter()
        for _ in range(10):
            got, batch = await callers(r.tokens, 5)
            errors.update(batch)
            if got:
                await r.tokens.invalidate(got[0])
        return r.outcome(
            "flapping 200/500",
            "odd requests 500 server_error; 10 fetches",
            50,
            errors,
            notes="each fetch: one 500, one 200",
        )


async def _skewed(offset: float) -> Outcome:
    async with rig(expires_in=300) as r:
        r.server.clock_offset = offset
        server_now = datetime.now(UTC) + timedelta(seconds=offset)
        # 2 s in server time: the header has 1 s resolution, so the wait is 1-2 s.
        retry_at = format_datetime(server_now + timedelta(seconds=2), usegmt=True)
        r.server.fail_next(Fault(status=503, headers={"Retry-After": retry_at}))
        got, errors = await callers(r.tokens)
        _, more = await callers(r.tokens)  # still fresh by the local monotonic clock
        errors.update(more)
        remaining = (got[0].expires_at - datetime.now(UTC)).total_seconds() if got else 0.0
        return r.outcome(
            f"server Date {'+' if offset > 0 else '-'}{abs(offset) / 60:.0f} min",
            f"Date header {offset:+.0f} s; a 503 with an HTTP-date Retry-After (+2 s, server time)",
            2 * CALLERS,
            errors,
            notes=f"waited {r.sleeps[0]:.2f} s; token valid {remaining:.0f} s of 300" if r.sleeps else "",
            extra={"remaining": remaining},
        )


async def clock_ahead() -> Outcome:
    return await _skewed(600.0)


async def clock_behind() -> Outcome:
    return await _skewed(-600.0)


SCENARIOS: dict[str, Callable[[], Awaitable[Outcome]]] = {
    "connection_refused": connection_refused,
    "connection_refused_warm": connection_refused_warm,
    "reset_mid_body": reset_mid_body,
    "slow_headers": slow_headers,
    "slow_body": slow_body,
    "storm_503": storm_503,
    "storm_503_retry_after": storm_503_retry_after,
    "storm_503_retry_after_long": storm_503_retry_after_long,
    "flapping": flapping,
    "clock_ahead": clock_ahead,
    "clock_behind": clock_behind,
}
