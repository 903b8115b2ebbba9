"""The OpenTelemetry integration against the embedded authorization server on loopback,
with the SDK's in-memory span exporter and metric reader: spans per fetch and signature,
their attributes, metric counts, failures with nothing secret in them, and nothing of
OpenTelemetry run per cache hit. asyncio and trio."""

from __future__ import annotations

import inspect
import secrets
import sys
import threading
from typing import Any

import anyio
import httpx
import pytest

from keyless_m2m import (
    ClientSecretBasic,
    InvalidClientError,
    KeylessM2MError,
    PrivateKeyJWT,
    SigningError,
    SyncTokenManager,
    TokenManager,
)
from keyless_m2m.cache import MemoryTokenCache
from keyless_m2m.integrations import opentelemetry as kotel
from keyless_m2m.signers import KeyDescription, LocalSigner
from keyless_m2m.testing.authorization_server import AuthorizationServer, Fault
from tests.echo_server import EchoServer
from tests.helpers import make_key, pem_of
from tests.otel_capture import Capture, capture
from tests.processes import run_python

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CANARY_SECRET = "otel-canary-secret-" + secrets.token_hex(12)
FETCH = kotel.SPAN_TOKEN_FETCH
SIGN = kotel.SPAN_SIGN


def attrs(item: Any) -> dict[str, Any]:
    """A span's or an event's attributes."""
    return dict(item.attributes or {})


@pytest.fixture
def otel() -> Any:
    with capture() as captured:
        yield captured


@pytest.fixture
def server() -> Any:
    with AuthorizationServer() as running:
        yield running


@pytest.fixture
def signer() -> LocalSigner:
    return LocalSigner.from_pem(pem_of(make_key("p256")))


async def _pkjwt(
    server: AuthorizationServer, signer: LocalSigner, client_id: str = "otel-client"
) -> PrivateKeyJWT:
    server.register_client(client_id, public_jwk=(await signer.describe()).public_jwk)
    return PrivateKeyJWT(client_id, signer)


async def test_one_fetch_span_and_one_signature_span_for_many_callers(
    otel: Capture, server: AuthorizationServer, signer: LocalSigner
) -> None:
    auth = await _pkjwt(server, signer)
    async with TokenManager(server.token_endpoint, auth, scope="pockets.read") as tokens:
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(tokens.get_token)
        for _ in range(100):
            await tokens.get_token()
    assert server.token_requests == 1
    (fetch,) = otel.spans(FETCH)
    (sign,) = otel.spans(SIGN)
    assert sign.parent is not None and sign.parent.span_id == fetch.context.span_id
    assert sign.context.trace_id == fetch.context.trace_id
    attributes = attrs(fetch)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == int(server.token_endpoint.split(":")[2].split("/")[0])
    assert attributes["keyless_m2m.grant_type"] == "client_credentials"
    assert attributes["keyless_m2m.auth.method"] == "private_key_jwt"
    assert attributes["keyless_m2m.token.scope"] == "pockets.read"
    assert attributes["keyless_m2m.fetch.outcome"] == "fetched"
    assert attributes["keyless_m2m.fetch.attempts"] == 1
    assert attributes["keyless_m2m.fetch.background"] is True
    assert "keyless_m2m.token.refresh.lag" not in attributes  # a first fetch is no refresh
    assert fetch.status.status_code.name == "OK"
    assert attrs(sign) == {
        "keyless_m2m.signer.backend": "local",
        "keyless_m2m.signer.algorithm": "ES256",
        "keyless_m2m.signature.purpose": "client_assertion",
    }
    assert otel.total(kotel.METRIC_FETCHES, keyless_m2m__fetch__outcome="fetched") == 1
    assert otel.total(kotel.METRIC_FETCH_DURATION) == 1
    assert otel.total(kotel.METRIC_REQUESTS) == 1
    assert otel.total(kotel.METRIC_SIGNATURES, keyless_m2m__signer__backend="local") == 1
    assert otel.total(kotel.METRIC_SIGNATURE_DURATION) == 1
    assert otel.total(kotel.METRIC_FAILURES) == 0
    # The 50 concurrent first callers waited for the fetch; the 100 after it were hits.
    assert otel.total(kotel.METRIC_CACHE_HITS) == 100
    assert tokens.stats.waits == 50  # in `async with` the fetch runs in the background


async def test_retries_are_events_of_the_one_fetch_span(otel: Capture, server: AuthorizationServer) -> None:
    server.register_client("svc", client_secret="s3")
    server.fail_next(Fault(status=503, count=2))
    async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3"), backoff=0.0) as tokens:
        await tokens.get_token()
    assert server.token_requests == 3
    (fetch,) = otel.spans(FETCH)
    retries = [e for e in fetch.events if e.name == kotel.EVENT_RETRY]
    assert [attrs(e)["keyless_m2m.attempt"] for e in retries] == [1, 2]
    assert {attrs(e)["http.response.status_code"] for e in retries} == {503}
    assert {attrs(e)["error.type"] for e in retries} == {"InvalidTokenResponseError"}
    assert attrs(fetch)["keyless_m2m.fetch.attempts"] == 3
    assert attrs(fetch)["keyless_m2m.auth.method"] == "client_secret_basic"
    assert otel.spans(SIGN) == []  # a client secret signs nothing
    assert otel.total(kotel.METRIC_REQUESTS) == 3
    assert otel.total(kotel.METRIC_FETCHES) == 1


async def test_a_refused_secret_is_a_failed_span_without_the_secret(
    otel: Capture, server: AuthorizationServer
) -> None:
    server.register_client("svc", client_secret="the-right-one")
    async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", CANARY_SECRET)) as tokens:
        with pytest.raises(InvalidClientError):
            await tokens.get_token()
    (fetch,) = otel.spans(FETCH)
    attributes = attrs(fetch)
    assert attributes["error.type"] == "InvalidClientError"
    assert attributes["keyless_m2m.fetch.outcome"] == "failed"
    assert attributes["keyless_m2m.error.retryable"] is False
    assert attributes["http.response.status_code"] == 401
    assert fetch.status.status_code.name == "ERROR"
    assert fetch.status.description is not None and fetch.status.description.startswith("InvalidClientError")
    (exception,) = [e for e in fetch.events if e.name == "exception"]
    assert attrs(exception)["exception.type"] == "InvalidClientError"
    assert "exception.stacktrace" not in attrs(exception)
    assert otel.total(kotel.METRIC_FAILURES, error__type="InvalidClientError") == 1
    assert otel.total(kotel.METRIC_FETCHES, keyless_m2m__fetch__outcome="failed") == 1
    assert not [t for t in otel.texts() if CANARY_SECRET in t or CANARY_SECRET[:16] in t]


async def test_a_server_echoing_the_credentials_reaches_no_span(otel: Capture, signer: LocalSigner) -> None:
    with EchoServer() as echo:
        for form in ("secret", "authorization", "basic-pair"):
            auth = ClientSecretBasic("echo-client", CANARY_SECRET)
            async with TokenManager(echo.url("description", form), auth, max_attempts=1) as tokens:
                with pytest.raises(KeylessM2MError):
                    await tokens.get_token()
        for form in ("assertion", "signature", "assertion-claims"):
            async with TokenManager(
                echo.url("description", form), PrivateKeyJWT("c", signer), max_attempts=1
            ) as t:
                with pytest.raises(KeylessM2MError):
                    await t.get_token()
        forbidden = echo.forbidden()
    assert len(otel.spans(FETCH)) == 6
    assert len(otel.spans(SIGN)) == 3
    assert any(s.status.description for s in otel.spans(FETCH))
    texts = "\n".join(otel.texts())
    assert CANARY_SECRET not in texts
    assert not [value[:10] for value in forbidden if value in texts]


class _LeakySigner:
    """A user's signer whose SDK exception carries a secret in its message."""

    def __init__(self, inner: LocalSigner) -> None:
        self.inner = inner

    async def describe(self) -> KeyDescription:
        return await self.inner.describe()

    async def sign(self, signing_input: bytes) -> bytes:
        raise RuntimeError(f"vault token {CANARY_SECRET} rejected")

    async def aclose(self) -> None:
        pass


async def test_a_signer_sdk_exception_is_recorded_by_type_only(
    otel: Capture, server: AuthorizationServer, signer: LocalSigner
) -> None:
    auth = await _pkjwt(server, signer)
    leaky = PrivateKeyJWT(auth.client_id, _LeakySigner(signer))
    async with TokenManager(server.token_endpoint, leaky) as tokens:
        with pytest.raises(SigningError):
            await tokens.get_token()
    (fetch,) = otel.spans(FETCH)
    (sign,) = otel.spans(SIGN)
    assert attrs(sign)["error.type"] == "RuntimeError"
    assert attrs(sign)["keyless_m2m.signer.backend"] == "_LeakySigner"
    assert sign.status.status_code.name == "ERROR" and not sign.status.description
    assert sign.events == ()  # no exception event: its message is the SDK's
    assert attrs(fetch)["error.type"] == "SigningError"
    assert attrs(fetch)["keyless_m2m.error.cause"] == "RuntimeError"
    assert otel.total(kotel.METRIC_SIGNATURES, error__type="RuntimeError") == 1
    assert otel.total(kotel.METRIC_FAILURES, error__type="SigningError") == 1
    assert not [t for t in otel.texts() if CANARY_SECRET in t]


async def test_no_access_token_or_assertion_in_any_span(
    otel: Capture, server: AuthorizationServer, signer: LocalSigner
) -> None:
    seen: list[str] = []
    server.on_request = lambda form: seen.extend(form.get("client_assertion", []))
    auth = await _pkjwt(server, signer)
    async with TokenManager(server.token_endpoint, auth, dpop=True) as tokens:
        token = await tokens.get_token()
    texts = "\n".join(otel.texts())
    assert token.value not in texts and seen and seen[0] not in texts
    assert seen[0].split(".")[2] not in texts  # the signature
    purposes = sorted(attrs(s)["keyless_m2m.signature.purpose"] for s in otel.spans(SIGN))
    assert purposes == ["client_assertion", "dpop_proof"]


async def test_a_refresh_records_its_lag(otel: Capture) -> None:
    with AuthorizationServer(expires_in=60) as server:
        server.register_client("svc", client_secret="s3")
        # The refresh window opens as soon as the token arrives: the next call refreshes.
        async with TokenManager(
            server.token_endpoint, ClientSecretBasic("svc", "s3"), refresh_window=59
        ) as tokens:
            first = await tokens.get_token()
            assert await tokens.get_token() is first  # served while the refresh runs
            with anyio.fail_after(10):
                while tokens.stats.refreshes < 2 or len(otel.spans(FETCH)) < 2:
                    await anyio.sleep(0.01)
    cold, refresh = sorted(otel.spans(FETCH), key=lambda s: s.start_time or 0)
    assert "keyless_m2m.token.refresh.lag" not in attrs(cold)
    assert attrs(refresh)["keyless_m2m.token.refresh.lag"] >= 0
    assert otel.total(kotel.METRIC_REFRESH_LAG) == 1
    assert otel.total(kotel.METRIC_FETCHES) == 2


async def test_a_wait_for_another_managers_fetch(otel: Capture) -> None:
    with AuthorizationServer(latency=0.3) as server:
        server.register_client("svc", client_secret="s3")
        cache = MemoryTokenCache()
        async with (
            TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3"), cache=cache) as one,
            TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3"), cache=cache) as two,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.get_token)
                tg.start_soon(two.get_token)
    assert server.token_requests == 1
    outcomes = sorted(attrs(s)["keyless_m2m.fetch.outcome"] for s in otel.spans(FETCH))
    assert outcomes == ["fetched", "shared_cache"]
    assert otel.total(kotel.METRIC_SHARED_WAITS) >= 1
    assert otel.total(kotel.METRIC_SHARED_WAIT_DURATION) >= 1
    waiter = next(s for s in otel.spans(FETCH) if attrs(s)["keyless_m2m.fetch.outcome"] == "shared_cache")
    assert [e.name for e in waiter.events] and {e.name for e in waiter.events} == {kotel.EVENT_SHARED_WAIT}
    assert attrs(waiter)["keyless_m2m.fetch.attempts"] == 0


async def test_a_cache_hit_runs_nothing_of_opentelemetry(otel: Capture, server: AuthorizationServer) -> None:
    server.register_client("svc", client_secret="s3")
    async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3")) as tokens:
        await tokens.get_token()
        spans_before = len(otel.spans())
        calls: dict[str, int] = {}

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event in ("call", "c_call"):
                where = (
                    frame.f_code.co_filename if event == "call" else getattr(arg, "__module__", None) or ""
                )
                name = event if event == "call" else f"c_call {getattr(arg, '__qualname__', '?')}"
                key = f"{name} {where}"
                calls[key] = calls.get(key, 0) + 1

        sys.setprofile(profile)
        try:
            for _ in range(1_000):
                await tokens.get_token()
        finally:
            sys.setprofile(None)
    assert len(otel.spans()) == spans_before
    assert otel.total(kotel.METRIC_CACHE_HITS) == 1_000
    otel_calls = {
        k: v for k, v in calls.items() if "opentelemetry" in k.split(" ")[-1] and "integrations" not in k
    }
    assert otel_calls == {}
    locks = {k: v for k, v in calls.items() if "acquire" in k or "Lock" in k}
    assert locks == {}
    # Per hit: one call of ours, the counting get_token of this integration, which answers
    # a hit on the manager's own scope itself (one coroutine, as without the counter).
    ours = {k: v for k, v in calls.items() if k.startswith("call ") and "keyless_m2m" in k}
    assert list(ours.values()) == [1_000] and "integrations/opentelemetry.py" in next(iter(ours))


async def test_with_an_sdk_configured_the_manager_is_still_an_async_token_source(
    otel: Capture, server: AuthorizationServer
) -> None:
    """As the docs order it: ``instrument()`` at startup, then the manager and its httpx
    auth. ``get_token`` stays a coroutine function (what the auth flows, the other
    integrations and frameworks check to tell an async source from a blocking one), and
    the auth authorizes requests."""
    server.register_client("svc", client_secret="s3")
    seen: list[str | None] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200)

    async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3")) as tokens:
        assert inspect.iscoroutinefunction(tokens.get_token)
        assert inspect.iscoroutinefunction(TokenManager.get_token)
        async with httpx.AsyncClient(auth=tokens.auth(), transport=httpx.MockTransport(api)) as client:
            for _ in range(3):
                assert (await client.get("https://api.example/v1")).status_code == 200
        token = await tokens.get_token()
    assert seen == [f"Bearer {token.value}"] * 3
    assert server.token_requests == 1
    assert otel.total(kotel.METRIC_CACHE_HITS) == 3  # the first call fetched


def test_the_sync_manager_counts_its_hits(otel: Capture, server: AuthorizationServer) -> None:
    server.register_client("svc", client_secret="s3")
    with SyncTokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3")) as tokens:
        tokens.get_token()
        threads = [threading.Thread(target=lambda: [tokens.get_token() for _ in range(50)]) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert server.token_requests == 1
    assert len(otel.spans(FETCH)) == 1
    assert otel.total(kotel.METRIC_CACHE_HITS) == 100


async def test_unconfigured_opentelemetry_leaves_the_hot_path_alone(server: AuthorizationServer) -> None:
    original = TokenManager.get_token
    # No SDK: the API's global providers (its proxy), as in an app that installed the
    # extra and never configured OpenTelemetry.
    kotel.instrument()
    try:
        assert kotel.is_instrumented()
        assert TokenManager.get_token is original
        server.register_client("svc", client_secret="s3")
        async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3")) as tokens:
            await tokens.get_token()
    finally:
        kotel.uninstrument()
    assert not kotel.is_instrumented()
    assert TokenManager.get_token is original


async def test_uninstrument_restores_the_library(server: AuthorizationServer) -> None:
    original_async, original_sync = TokenManager.get_token, SyncTokenManager.get_token
    with capture() as otel:
        assert TokenManager.get_token is not original_async
    assert (TokenManager.get_token, SyncTokenManager.get_token) == (original_async, original_sync)
    server.register_client("svc", client_secret="s3")
    async with TokenManager(server.token_endpoint, ClientSecretBasic("svc", "s3")) as tokens:
        await tokens.get_token()
    assert otel.spans() == []


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_without_the_extra_the_import_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import keyless_m2m, keyless_m2m.integrations.httpx\n"
        "try:\n"
        "    import keyless_m2m.integrations.opentelemetry\n"
        "except keyless_m2m.errors.MissingExtraError as exc:\n"
        "    print(type(exc).__name__, exc.extra, '|', exc)\n"
        "    assert isinstance(exc, ImportError)\n"
    )
    stdout = run_python(code)
    assert "MissingExtraError opentelemetry |" in stdout
    assert "pip install 'keyless-m2m[opentelemetry]'" in stdout


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_the_library_never_imports_opentelemetry() -> None:
    code = (
        "import sys, anyio\n"
        "import keyless_m2m, keyless_m2m.signers, keyless_m2m.cache, keyless_m2m.sync\n"
        "from keyless_m2m.testing.authorization_server import AuthorizationServer\n"
        "async def main():\n"
        "    with AuthorizationServer() as server:\n"
        "        server.register_client('svc', client_secret='s3')\n"
        "        async with keyless_m2m.TokenManager(server.token_endpoint,\n"
        "                keyless_m2m.ClientSecretBasic('svc', 's3')) as tokens:\n"
        "            await tokens.get_token()\n"
        "anyio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    stdout = run_python(code)
    assert stdout.strip() == "[]"


@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {}), id="asyncio")])
async def test_an_sdk_set_globally_after_instrument_starts_the_hit_count_at_its_first_collection() -> None:
    # In a subprocess: the global providers can be set once per process.
    code = (
        "import anyio\n"
        "from opentelemetry import metrics\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from keyless_m2m import ClientSecretBasic, TokenManager\n"
        "from keyless_m2m.integrations import opentelemetry as kotel\n"
        "from keyless_m2m.testing.authorization_server import AuthorizationServer\n"
        "original = TokenManager.get_token\n"
        "kotel.instrument()\n"
        "assert TokenManager.get_token is original\n"
        "reader = InMemoryMetricReader()\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "def hits():\n"
        "    data = reader.get_metrics_data()\n"
        "    return [p.value for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics\n"
        "            if m.name == kotel.METRIC_CACHE_HITS for p in m.data.data_points]\n"
        "assert hits() == [0], hits()\n"
        "assert TokenManager.get_token is not original\n"
        "async def main():\n"
        "    with AuthorizationServer() as server:\n"
        "        server.register_client('svc', client_secret='s3')\n"
        "        async with TokenManager(server.token_endpoint, ClientSecretBasic('svc', 's3')) as tokens:\n"
        "            for _ in range(11):\n"
        "                await tokens.get_token()\n"
        "anyio.run(main)\n"
        "print(hits())\n"
        "kotel.uninstrument()\n"
        "assert TokenManager.get_token is original\n"
    )
    stdout = run_python(code)
    assert stdout.strip() == "[10]"
