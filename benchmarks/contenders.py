"""The libraries under test, each wrapped the way an application would use it.

Every contender offers:

- ``get()``: what one caller does before one API request, i.e. get a usable access
  token (keyless-m2m: ``await manager.get_token()``; Authlib: the token check its
  ``AsyncOAuth2Client.request()`` makes, ``ensure_active_token``, after a lazy first
  ``fetch_token``; httpx-auth: the token-cache lookup its ``auth_flow`` makes, with the
  blocking ``request_new_token`` as the fetch);
- ``hot_token(n)`` / ``hot_flow(n)``: ``n`` iterations of that token check, and of the
  whole per-request ``httpx.Auth`` step (``async_auth_flow`` up to the request it yields),
  with a cached fresh token, in a tight loop (the loop is written out per library so no
  wrapper call is timed).

All of them authenticate with ``client_secret_basic`` (the one method all three share);
``KeylessM2M(private_key_jwt=True)`` adds keyless-m2m's own method for information.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter_ns
from types import TracebackType
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from keyless_m2m import ClientSecretBasic, PrivateKeyJWT, TokenManager
from keyless_m2m.signers import LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-0123456789"
SCOPE = "pockets.read"
API_URL = "https://api.example/v2/pockets/"

Timed = Callable[[int], Awaitable[int]]  # runs an operation n times, returns the ns it took

_SIGNER: LocalSigner | None = None


def es256_signer() -> LocalSigner:
    """One ES256 key for the whole run (the server registers its public JWK)."""
    global _SIGNER
    if _SIGNER is None:
        _SIGNER = LocalSigner(ec.generate_private_key(ec.SECP256R1()), name="bench ES256 key")
    return _SIGNER


def ours_leeway(lifetime: float) -> float:
    """keyless-m2m's default expiry leeway (a tenth of the lifetime, at most 10 s); the
    peers get the same value, since their defaults (Authlib 60 s, httpx-auth 30 s) would
    make a 2 s token look expired from the start."""
    return min(10.0, lifetime / 10)


async def noop() -> None:
    return None


async def time_floor(n: int) -> int:
    """``await noop()`` n times: the cost of one coroutine call, the floor."""
    t0 = perf_counter_ns()
    for _ in range(n):
        await noop()
    return perf_counter_ns() - t0


def flow_timer(auth: httpx.Auth) -> Timed:
    """``n`` runs of ``auth``'s async flow up to the request it yields, on one request: the
    per-request auth step of any ``httpx.Auth``."""
    request = httpx.Request("GET", API_URL)

    async def timed(n: int) -> int:
        t0 = perf_counter_ns()
        for _ in range(n):
            flow = auth.async_auth_flow(request)
            await flow.__anext__()
            await flow.aclose()
        return perf_counter_ns() - t0

    return timed


async def time_empty(n: int) -> int:
    """The bare ``for`` loop, to show what every per-iteration figure includes."""
    t0 = perf_counter_ns()
    for _ in range(n):
        pass
    return perf_counter_ns() - t0


class Contender:
    name = "?"
    secret_method = "client_secret_basic"

    def __init__(self, server: AuthorizationServer, lifetime: float) -> None:
        self.server = server
        self.lifetime = lifetime
        self.leeway = ours_leeway(lifetime)

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def get(self) -> Any:
        raise NotImplementedError

    async def hot_token(self, n: int) -> int:
        raise NotImplementedError

    async def hot_flow(self, n: int) -> int:
        raise NotImplementedError

    async def __aenter__(self) -> Contender:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Baseline(Contender):
    """No token at all: each call is ``await noop()``. The noise floor of the load
    scenarios (GC, the token server's threads taking the GIL, timer granularity)."""

    name = "baseline: await noop(), no token"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get(self) -> None:
        return None


class KeylessM2M(Contender):
    """``async with TokenManager(...)``: single flight, background refresh."""

    def __init__(
        self,
        server: AuthorizationServer,
        lifetime: float,
        *,
        private_key_jwt: bool = False,
        http_client: bool = False,
    ) -> None:
        super().__init__(server, lifetime)
        self.private_key_jwt = private_key_jwt
        self.own_http_client = http_client
        if private_key_jwt:
            self.name = "keyless-m2m (private_key_jwt ES256)"
        elif http_client:
            self.name = "keyless-m2m (http_client= given)"
        else:
            self.name = "keyless-m2m"
        self.manager: TokenManager | None = None
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        auth: Any
        if self.private_key_jwt:
            auth = PrivateKeyJWT(CLIENT_ID, es256_signer())
        else:
            auth = ClientSecretBasic(CLIENT_ID, CLIENT_SECRET)
        options: dict[str, Any] = {}
        if self.own_http_client:
            # Built before the clock starts, as Authlib builds its client in its constructor.
            self.http = httpx.AsyncClient()
            options["http_client"] = self.http
        self.manager = TokenManager(self.server.token_endpoint, auth, scope=SCOPE, **options)
        await self.manager.__aenter__()
        # The bound get_token itself, no wrapper around the measured call.
        self.get = self.manager.get_token  # type: ignore[method-assign]

    async def close(self) -> None:
        assert self.manager is not None
        await self.manager.__aexit__(None, None, None)
        if self.http is not None:
            await self.http.aclose()

    async def hot_token(self, n: int) -> int:
        assert self.manager is not None
        get_token = self.manager.get_token
        t0 = perf_counter_ns()
        for _ in range(n):
            await get_token()
        return perf_counter_ns() - t0

    async def hot_flow(self, n: int) -> int:
        assert self.manager is not None
        return await flow_timer(self.manager.auth())(n)


class Authlib(Contender):
    """One shared ``AsyncOAuth2Client`` with ``token_endpoint`` and
    ``grant_type="client_credentials"`` (so it refreshes by itself once it has a token).

    Authlib does not fetch the first token on its own (``request()`` without a token
    raises ``MissingTokenError``): the application calls ``fetch_token()``. ``app_lock``
    picks how a lazy application does that: without a lock (``if not client.token: await
    client.fetch_token()``, what most code does), or under its own ``anyio.Lock``
    (double-checked), which the stampede shows too.
    """

    def __init__(self, server: AuthorizationServer, lifetime: float, *, app_lock: bool = False) -> None:
        super().__init__(server, lifetime)
        self.app_lock = app_lock
        self.name = "authlib + app lock" if app_lock else "authlib"
        self.client: Any = None
        self._lock = anyio.Lock()

    async def open(self) -> None:
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        self.client = AsyncOAuth2Client(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_endpoint_auth_method="client_secret_basic",
            scope=SCOPE,
            leeway=self.leeway,
            token_endpoint=self.server.token_endpoint,
            grant_type="client_credentials",
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self) -> Any:
        client = self.client
        if not client.token:
            if self.app_lock:
                async with self._lock:
                    if not client.token:
                        await client.fetch_token()
            else:
                await client.fetch_token()
        # What AsyncOAuth2Client.request() does before every request.
        await client.ensure_active_token(client.token)
        return client.token["access_token"]

    async def hot_token(self, n: int) -> int:
        client = self.client
        ensure = client.ensure_active_token
        t0 = perf_counter_ns()
        for _ in range(n):
            await ensure(client.token)
            client.token["access_token"]  # the read a request makes
        return perf_counter_ns() - t0

    async def hot_flow(self, n: int) -> int:
        try:  # Authlib >= 1.7 runs on httpx2 when it is installed
            from authlib.integrations.httpx_client.oauth2_client import httpx2 as http
        except ImportError:
            http = httpx

        client = self.client
        ensure = client.ensure_active_token
        request = http.Request("GET", API_URL)
        t0 = perf_counter_ns()
        for _ in range(n):
            # AsyncOAuth2Client.request(): the token check, then its OAuth2Auth flow.
            await ensure(client.token)
            flow = client.token_auth.async_auth_flow(request)
            await flow.__anext__()
            await flow.aclose()
        return perf_counter_ns() - t0


class HttpxAuth(Contender):
    """``httpx_auth.OAuth2ClientCredentials``: a synchronous ``httpx.Auth`` whose flow
    looks the token up in a process-wide cache (``OAuth2.token_cache``) under a
    ``threading.Lock`` and, when it is missing or expired, fetches one with a blocking
    ``httpx.Client`` inside the flow (on an event loop: the loop waits)."""

    name = "httpx-auth"

    def __init__(self, server: AuthorizationServer, lifetime: float) -> None:
        super().__init__(server, lifetime)
        self.auth: Any = None

    async def open(self) -> None:
        from httpx_auth import OAuth2, OAuth2ClientCredentials

        OAuth2.token_cache.clear()
        self.auth = OAuth2ClientCredentials(
            self.server.token_endpoint,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scope=SCOPE,
            early_expiry=self.leeway,
        )
        self._cache = OAuth2.token_cache

    async def close(self) -> None:
        self._cache.clear()

    async def get(self) -> Any:
        auth = self.auth
        # The first thing OAuth2BaseAuth.auth_flow does (then it sets the header).
        return self._cache.get_token(
            auth.state, early_expiry=auth.early_expiry, on_missing_token=auth.request_new_token
        )

    async def hot_token(self, n: int) -> int:
        auth = self.auth
        get_token = self._cache.get_token
        state, early, fetch = auth.state, auth.early_expiry, auth.request_new_token
        t0 = perf_counter_ns()
        for _ in range(n):
            get_token(state, early_expiry=early, on_missing_token=fetch)
        return perf_counter_ns() - t0

    async def hot_flow(self, n: int) -> int:
        return await flow_timer(self.auth)(n)  # async_auth_flow wraps its synchronous auth_flow


async def best_ns_per_iter(ops: Mapping[str, Timed], runs: int, target_s: float = 0.02) -> dict[str, float]:
    """Best of ``runs`` timings of each ``timed(n)``, in ns per iteration.

    ``n`` is picked per operation so one timing takes about ``target_s``; the operations
    take turns within each run (so a noisy neighbour slows all of them, not one), and the
    GC is off while timing, as in ``timeit``."""
    sizes = {}
    for name, timed in ops.items():
        await timed(200)  # warm up
        probe = max(1, await timed(2000)) / 2000
        sizes[name] = max(2000, int(target_s * 1e9 / probe))
    best = dict.fromkeys(ops, float("inf"))
    for _ in range(runs):
        for name, timed in ops.items():
            n = sizes[name]
            gc.collect()
            gc.disable()
            try:
                best[name] = min(best[name], await timed(n) / n)
            finally:
                gc.enable()
    return best
