"""OpenTelemetry traces and metrics for token fetches and signatures.

>>> from keyless_m2m.integrations import opentelemetry as kotel
>>> kotel.instrument()          # the global tracer and meter providers

One process-wide switch, as OpenTelemetry's own instrumentations: :func:`instrument`
installs the library's telemetry hooks (:mod:`keyless_m2m._telemetry`), so every
:class:`~keyless_m2m.TokenManager` and :class:`~keyless_m2m.SyncTokenManager` of the
process reports; :func:`uninstrument` removes them. Needs the ``opentelemetry`` extra
(``opentelemetry-api``); without it, importing this module raises
:class:`~keyless_m2m.errors.MissingExtraError` naming the extra.

What is recorded (the names are stable; docs/integrations/opentelemetry.md has the table):

- a span ``keyless_m2m.token.fetch`` per token fetch (one per refresh, whatever the number
  of callers waiting for it), with a ``keyless_m2m.token.retry`` event per failed attempt
  that is retried and a ``keyless_m2m.shared_cache.wait`` event per wait for another
  process's fetch; a child span ``keyless_m2m.sign`` per signature (client assertions and
  DPoP proofs);
- counters and histograms of fetches, failures, token requests, refresh lag, shared-cache
  waits and signatures, and an observable counter of cache hits.

Nothing here runs on the cache-hit path unless a meter provider reads the cache-hit
counter: until then :meth:`TokenManager.get_token` is the library's own function, so an
installed but unconfigured OpenTelemetry (the API's no-op providers) costs it nothing.
Once a real meter provider is in place (given to :func:`instrument`, set globally before
it, or at its first collection), each call through ``get_token()`` counts whether it was
answered from the cache: one integer increment, no span, no lock.

No secret reaches a span or a metric: errors are the library's (their messages are scrubbed
of what was sent), and an exception of any other origin (a signer's SDK) is recorded as
its type name only; spans are started with ``record_exception=False`` and
``set_status_on_exception=False`` so the OpenTelemetry API records nothing by itself.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterable
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .. import _telemetry
from .._runtime import import_extra
from .._telemetry import FetchInfo, Signer, install, installed, uninstall
from ..errors import KeylessM2MError
from ..manager import TokenManager
from ..sync import SyncTokenManager
from ..token import AccessToken

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

import_extra("opentelemetry.trace", "opentelemetry")
from opentelemetry import metrics, trace  # noqa: E402 - after the check that names the extra
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from .. import __version__  # noqa: E402

__all__ = [
    "ATTRIBUTES",
    "INSTRUMENTATION_NAME",
    "METRICS",
    "SPANS",
    "instrument",
    "is_instrumented",
    "uninstrument",
]

INSTRUMENTATION_NAME: Final = "keyless_m2m"

# -- the names (stable: renaming one is a breaking change) ---------------------------------

SPAN_TOKEN_FETCH: Final = "keyless_m2m.token.fetch"  # noqa: S105 - a span name
SPAN_SIGN: Final = "keyless_m2m.sign"
EVENT_RETRY: Final = "keyless_m2m.token.retry"
EVENT_SHARED_WAIT: Final = "keyless_m2m.shared_cache.wait"
SPANS: Final = (SPAN_TOKEN_FETCH, SPAN_SIGN)

METRIC_FETCHES: Final = "keyless_m2m.token.fetches"
METRIC_FETCH_DURATION: Final = "keyless_m2m.token.fetch.duration"
METRIC_FAILURES: Final = "keyless_m2m.token.failures"
METRIC_REQUESTS: Final = "keyless_m2m.token.requests"
METRIC_REFRESH_LAG: Final = "keyless_m2m.token.refresh.lag"
METRIC_CACHE_HITS: Final = "keyless_m2m.token.cache.hits"
METRIC_SHARED_WAITS: Final = "keyless_m2m.shared_cache.waits"
METRIC_SHARED_WAIT_DURATION: Final = "keyless_m2m.shared_cache.wait.duration"
METRIC_SIGNATURES: Final = "keyless_m2m.signatures"
METRIC_SIGNATURE_DURATION: Final = "keyless_m2m.signature.duration"
METRICS: Final = (
    METRIC_FETCHES,
    METRIC_FETCH_DURATION,
    METRIC_FAILURES,
    METRIC_REQUESTS,
    METRIC_REFRESH_LAG,
    METRIC_CACHE_HITS,
    METRIC_SHARED_WAITS,
    METRIC_SHARED_WAIT_DURATION,
    METRIC_SIGNATURES,
    METRIC_SIGNATURE_DURATION,
)

SERVER_ADDRESS: Final = "server.address"  # OpenTelemetry semantic conventions
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
HTTP_STATUS: Final = "http.response.status_code"
GRANT_TYPE: Final = "keyless_m2m.grant_type"
AUTH_METHOD: Final = "keyless_m2m.auth.method"
SCOPE: Final = "keyless_m2m.token.scope"
BACKGROUND: Final = "keyless_m2m.fetch.background"
OUTCOME: Final = "keyless_m2m.fetch.outcome"
ATTEMPTS: Final = "keyless_m2m.fetch.attempts"
REFRESH_LAG: Final = "keyless_m2m.token.refresh.lag"
ERROR_CAUSE: Final = "keyless_m2m.error.cause"
RETRYABLE: Final = "keyless_m2m.error.retryable"
ATTEMPT: Final = "keyless_m2m.attempt"
RETRY_DELAY: Final = "keyless_m2m.retry.delay"
WAIT_DURATION: Final = "keyless_m2m.shared_cache.wait.duration"
BACKEND: Final = "keyless_m2m.signer.backend"
ALGORITHM: Final = "keyless_m2m.signer.algorithm"
PURPOSE: Final = "keyless_m2m.signature.purpose"
ATTRIBUTES: Final = (
    SERVER_ADDRESS,
    SERVER_PORT,
    ERROR_TYPE,
    HTTP_STATUS,
    GRANT_TYPE,
    AUTH_METHOD,
    SCOPE,
    BACKGROUND,
    OUTCOME,
    ATTEMPTS,
    REFRESH_LAG,
    ERROR_CAUSE,
    RETRYABLE,
    ATTEMPT,
    RETRY_DELAY,
    WAIT_DURATION,
    BACKEND,
    ALGORITHM,
    PURPOSE,
)

# The shipped backends by class; any other signer is named by its class.
_BACKENDS: Final = {
    "LocalSigner": "local",
    "AwsKmsSigner": "aws_kms",
    "GcpKmsSigner": "gcp_kms",
    "AzureKeyVaultSigner": "azure_key_vault",
    "VaultTransitSigner": "vault_transit",
    "Pkcs11Signer": "pkcs11",
}
_MAX_STATUS = 300  # characters of a (scrubbed) error message in a span status


def _error_type(error: BaseException) -> str:
    return type(error).__name__


def _status_text(error: KeylessM2MError) -> str:
    # The library's message: already free of what was sent (credentials, assertion).
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_STATUS else text[: _MAX_STATUS - 3] + "..."


class _HitCounter:
    """Cache hits, counted by the wrapped ``get_token()`` once a reader is there."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _Fetch:
    """One token fetch's span and metrics (a :class:`~keyless_m2m._telemetry.FetchObservation`)."""

    __slots__ = (
        "_attributes",
        "_ended",
        "_hooks",
        "_info",
        "_metric_attributes",
        "_scope",
        "_span",
        "_started",
    )

    def __init__(self, hooks: _Hooks, info: FetchInfo) -> None:
        self._hooks = hooks
        self._info = info
        parts = urlsplit(info.url)
        self._metric_attributes: dict[str, AttributeValue] = {
            SERVER_ADDRESS: parts.hostname or "",
            AUTH_METHOD: info.auth_method,
        }
        attributes: dict[str, AttributeValue] = {
            **self._metric_attributes,
            SERVER_PORT: parts.port or (443 if parts.scheme == "https" else 80),
            GRANT_TYPE: "client_credentials",
            BACKGROUND: info.background,
        }
        if info.scope:
            attributes[SCOPE] = info.scope
        if info.refresh_lag is not None:
            attributes[REFRESH_LAG] = info.refresh_lag
        self._attributes = attributes
        self._ended = False
        self._span: Span | None = None
        self._scope: Any = None
        self._started = 0.0

    def __enter__(self) -> _Fetch:
        hooks = self._hooks
        self._span = hooks.tracer.start_span(
            SPAN_TOKEN_FETCH,
            kind=SpanKind.INTERNAL,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        # The current span while the fetch runs: attempts, waits and signatures land on it.
        self._scope = trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        self._scope.__enter__()
        self._started = perf_counter()
        if self._info.refresh_lag is not None:
            hooks.refresh_lag.record(
                self._info.refresh_lag, {SERVER_ADDRESS: self._metric_attributes[SERVER_ADDRESS]}
            )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not self._ended:  # something the library does not raise (KeyboardInterrupt...)
                self._end("failed", {ERROR_TYPE: _error_type(exc) if exc is not None else "unknown"})
                if self._span is not None:
                    self._span.set_status(StatusCode.ERROR)
        finally:
            # Nothing of the exception reaches the span from here (see use_span's flags).
            self._scope.__exit__(None, None, None)
            if self._span is not None:
                self._span.end()

    def _end(self, outcome: str, extra: dict[str, AttributeValue], attempts: int | None = None) -> None:
        self._ended = True
        hooks = self._hooks
        attributes = {**self._metric_attributes, OUTCOME: outcome, **extra}
        hooks.fetches.add(1, attributes)
        hooks.fetch_duration.record(perf_counter() - self._started, attributes)
        if attempts:
            hooks.requests.add(attempts, self._metric_attributes)
        span = self._span
        if span is not None:
            span.set_attribute(OUTCOME, outcome)
            if attempts is not None:
                span.set_attribute(ATTEMPTS, attempts)
            for name, value in extra.items():
                span.set_attribute(name, value)

    def succeeded(self, *, attempts: int, from_shared_cache: bool) -> None:
        self._end("shared_cache" if from_shared_cache else "fetched", {}, attempts)
        if self._span is not None:
            self._span.set_status(StatusCode.OK)

    def failed(self, error: KeylessM2MError, *, attempts: int, cause: str | None) -> None:
        extra: dict[str, AttributeValue] = {ERROR_TYPE: _error_type(error)}
        self._end("failed", extra, attempts)
        failure_attributes = {**self._metric_attributes, **extra}
        self._hooks.failures.add(1, failure_attributes)
        span = self._span
        if span is None:
            return
        span.set_attribute(RETRYABLE, bool(error.retryable))
        status_code = getattr(error, "status_code", None)
        if isinstance(status_code, int):
            span.set_attribute(HTTP_STATUS, status_code)
        if cause is not None:
            span.set_attribute(ERROR_CAUSE, cause)
        # An exception event by hand: type and scrubbed message, no traceback (whose
        # chained exceptions are not ours to show).
        span.add_event("exception", {"exception.type": _error_type(error), "exception.message": str(error)})
        span.set_status(StatusCode.ERROR, _status_text(error))

    def cancelled(self, *, attempts: int) -> None:
        self._end("cancelled", {}, attempts)


class _Hooks:
    """The :class:`~keyless_m2m._telemetry.Hooks` over one tracer and one meter."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider)
        meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider)
        self.fetches = meter.create_counter(
            METRIC_FETCHES,
            unit="{fetch}",
            description="Token fetches (one per refresh, however many callers)",
        )
        self.fetch_duration = meter.create_histogram(
            METRIC_FETCH_DURATION, unit="s", description="Duration of token fetches, every attempt included"
        )
        self.failures = meter.create_counter(
            METRIC_FAILURES, unit="{fetch}", description="Token fetches that failed, by error type"
        )
        self.requests = meter.create_counter(
            METRIC_REQUESTS, unit="{request}", description="HTTP requests to the token endpoint (attempts)"
        )
        self.refresh_lag = meter.create_histogram(
            METRIC_REFRESH_LAG,
            unit="s",
            description="How long after its refresh window opened a token's refresh started",
        )
        self.shared_waits = meter.create_counter(
            METRIC_SHARED_WAITS, unit="{wait}", description="Waits for another process's fetch (shared cache)"
        )
        self.shared_wait_duration = meter.create_histogram(
            METRIC_SHARED_WAIT_DURATION, unit="s", description="Duration of waits for another process's fetch"
        )
        self.signatures = meter.create_counter(
            METRIC_SIGNATURES, unit="{signature}", description="Signatures, by signer backend and algorithm"
        )
        self.signature_duration = meter.create_histogram(
            METRIC_SIGNATURE_DURATION, unit="s", description="Duration of signatures, by signer backend"
        )
        self.hits = _HitCounter()
        self.counting = False
        self.active = True
        meter.create_observable_counter(
            METRIC_CACHE_HITS,
            callbacks=[self._observe_hits],
            unit="{hit}",
            description="get_token() calls answered from the in-memory cache",
        )
        self._algorithms: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def _observe_hits(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return ()
        if not self.counting:
            # A reader is collecting: from now on the hot path counts.
            self.counting = True
            _count_hits(self.hits)
        return (metrics.Observation(self.hits.value),)

    # -- the hooks ---------------------------------------------------------------------

    def token_fetch(self, info: FetchInfo) -> _Fetch:
        return _Fetch(self, info)

    def retry(self, attempt: int, error: KeylessM2MError, delay: float) -> None:
        attributes: dict[str, AttributeValue] = {
            ATTEMPT: attempt,
            ERROR_TYPE: _error_type(error),
            RETRY_DELAY: delay,
        }
        status_code = getattr(error, "status_code", None)
        if isinstance(status_code, int):
            attributes[HTTP_STATUS] = status_code
        trace.get_current_span().add_event(EVENT_RETRY, attributes)

    def shared_wait(self, seconds: float) -> None:
        self.shared_waits.add(1)
        self.shared_wait_duration.record(seconds)
        trace.get_current_span().add_event(EVENT_SHARED_WAIT, {WAIT_DURATION: seconds})

    async def sign(self, signer: Signer, signing_input: bytes, purpose: str) -> bytes:
        attributes: dict[str, AttributeValue] = {
            BACKEND: _BACKENDS.get(type(signer).__name__, type(signer).__name__),
            ALGORITHM: await self._algorithm(signer),
            PURPOSE: purpose,
        }
        started = perf_counter()
        with self.tracer.start_as_current_span(
            SPAN_SIGN,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                signature = await signer.sign(signing_input)
            except BaseException as exc:
                # Only the type: an SDK's message may hold anything.
                failed = {**attributes, ERROR_TYPE: _error_type(exc)}
                span.set_attribute(ERROR_TYPE, _error_type(exc))
                span.set_status(StatusCode.ERROR)
                self.signatures.add(1, failed)
                self.signature_duration.record(perf_counter() - started, failed)
                raise
            self.signatures.add(1, attributes)
            self.signature_duration.record(perf_counter() - started, attributes)
            return signature

    async def _algorithm(self, signer: Signer) -> str:
        try:
            return self._algorithms[signer]
        except (KeyError, TypeError):
            pass
        describe = getattr(signer, "describe", None)
        alg = "unknown"
        if describe is not None:
            try:
                alg = str((await describe()).algorithm)
            except Exception:  # noqa: S110 - sign() reports it; no name here is worth failing for
                pass
            else:
                with contextlib.suppress(TypeError):  # not weakly referenceable
                    self._algorithms[signer] = alg
        return alg


# -- the cache-hit counter on get_token() -----------------------------------------------

_ORIGINAL_ASYNC: Final = TokenManager.get_token
_ORIGINAL_SYNC: Final = SyncTokenManager.get_token


def _counting_async(counter: _HitCounter) -> Callable[..., Any]:
    original = _ORIGINAL_ASYNC

    # A coroutine function, as TokenManager.get_token is: the auth flows, the other
    # integrations and frameworks tell an async token source from a blocking one by it.
    # A hit on the manager's own scope is answered here, by the same check as the
    # manager's hot path (one clock read, the clock the manager reads: _telemetry is in
    # the manual clock's registry), so it costs one coroutine, as without the counter.
    # Any other call goes to the library's own get_token, counted when its entry is fresh
    # (a peek: the entry table's order is the library's to change).
    @functools.wraps(original)
    async def get_token(
        self: TokenManager, scope: Any = None, *, resource: Any = None, audience: Any = None
    ) -> AccessToken:
        if scope is None and resource is None and audience is None:
            current = self._default_entry.current
            if _telemetry.monotonic() < current.refresh_at:
                counter.value += 1
                return current.token
            return await original(self)
        entry = self._peek(scope, resource, audience)
        if entry is not None and _telemetry.monotonic() < entry.current.refresh_at:
            counter.value += 1
        return await original(self, scope, resource=resource, audience=audience)

    return get_token


def _counting_sync(counter: _HitCounter) -> Callable[..., Any]:
    original = _ORIGINAL_SYNC

    @functools.wraps(original)
    def get_token(
        self: SyncTokenManager, scope: Any = None, *, resource: Any = None, audience: Any = None
    ) -> Any:
        entry = self._manager._peek(scope, resource, audience)
        if entry is not None and _telemetry.monotonic() < entry.current.refresh_at:
            # From many threads an increment may rarely be lost (no lock on this path).
            counter.value += 1
        return original(self, scope, resource=resource, audience=audience)

    return get_token


def _count_hits(counter: _HitCounter | None) -> None:
    if counter is None:
        TokenManager.get_token = _ORIGINAL_ASYNC  # type: ignore[method-assign]
        SyncTokenManager.get_token = _ORIGINAL_SYNC  # type: ignore[method-assign]
    else:
        TokenManager.get_token = _counting_async(counter)  # type: ignore[method-assign]
        SyncTokenManager.get_token = _counting_sync(counter)  # type: ignore[method-assign]


def _is_real(provider: object) -> bool:
    """Whether ``provider`` is an SDK's (not the API's no-op or not-yet-set proxy)."""
    return (
        not isinstance(provider, metrics.NoOpMeterProvider)
        and type(provider).__name__ != "_ProxyMeterProvider"
    )


# -- the switch ---------------------------------------------------------------------------


def instrument(
    *, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> None:
    """Report every token manager's fetches and signatures to OpenTelemetry.

    ``tracer_provider`` / ``meter_provider``: where spans and metrics go (default: the
    global providers, ``opentelemetry.trace.get_tracer_provider()`` and
    ``opentelemetry.metrics.get_meter_provider()``, read now; a global provider set later
    is used through the API's proxy). Calling it again replaces the previous providers.
    """
    uninstrument()
    hooks = _Hooks(tracer_provider, meter_provider)
    install(hooks)
    if _is_real(meter_provider if meter_provider is not None else metrics.get_meter_provider()):
        hooks.counting = True
        _count_hits(hooks.hits)


def uninstrument() -> None:
    """Stop reporting (``get_token()`` is the library's own again). Idempotent."""
    hooks = installed()
    if isinstance(hooks, _Hooks):
        hooks.active = False
        uninstall(hooks)
    _count_hits(None)


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return isinstance(installed(), _Hooks)
