"""The OpenTelemetry integration through the SDK's OTLP/HTTP exporters to a collector on
loopback: what actually leaves the process. The collector decodes the protobuf export
requests (opentelemetry-proto), so the span and metric names are checked as a backend
receives them, and the raw bytes it received are searched for the secrets the fetches
carried: a refused client secret and a private_key_jwt assertion. asyncio and trio."""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from keyless_m2m import ClientSecretBasic, InvalidClientError, PrivateKeyJWT, TokenManager
from keyless_m2m.integrations import opentelemetry as kotel
from keyless_m2m.testing.authorization_server import AuthorizationServer
from keyless_m2m.testing.signers import InMemorySigner

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

CANARY_SECRET = "otlp-canary-secret-" + secrets.token_hex(12)


class RecordingSigner(InMemorySigner):
    """Keeps each client assertion it completes (signing input + signature)."""

    def __init__(self) -> None:
        super().__init__("ES256")
        self.assertions: list[str] = []

    async def sign(self, signing_input: bytes) -> bytes:
        signature = await super().sign(signing_input)
        encoded = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
        self.assertions.append(f"{signing_input.decode()}.{encoded}")
        return signature


@dataclass
class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: the export requests it was sent, by path."""

    port: int = 0
    bodies: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def raw(self) -> bytes:
        return b"".join(b for bodies in self.bodies.values() for b in bodies)

    def spans(self) -> list[Any]:
        found: list[Any] = []
        for body in self.bodies.get("/v1/traces", []):
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found

    def metric_names(self) -> set[str]:
        names: set[str] = set()
        for body in self.bodies.get("/v1/metrics", []):
            request = ExportMetricsServiceRequest.FromString(body)
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    names.update(metric.name for metric in scope.metrics)
        return names


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                received.bodies.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def exporting(collector: Collector) -> Iterator[tuple[TracerProvider, MeterProvider]]:
    base = f"http://127.0.0.1:{collector.port}"
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics"), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(metric_readers=[reader])
    kotel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield tracer_provider, meter_provider
    finally:
        kotel.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()


async def test_what_reaches_a_collector_names_the_fetch_and_carries_no_secret(
    collector: Collector, exporting: tuple[TracerProvider, MeterProvider]
) -> None:
    tracer_provider, meter_provider = exporting
    signer = RecordingSigner()
    with AuthorizationServer() as server:
        server.register_client("otlp-client", public_jwk=signer.public_jwk)
        server.register_client("refused", client_secret="the-right-one")
        async with TokenManager(server.token_endpoint, PrivateKeyJWT("otlp-client", signer)) as tokens:
            token = await tokens.get_token()
            for _ in range(10):
                assert await tokens.get_token() is token  # cache hits, counted
        async with TokenManager(server.token_endpoint, ClientSecretBasic("refused", CANARY_SECRET)) as bad:
            with pytest.raises(InvalidClientError):
                await bad.get_token()
    tracer_provider.force_flush()
    meter_provider.force_flush()

    fetches = [s for s in collector.spans() if s.name == kotel.SPAN_TOKEN_FETCH]
    signs = [s for s in collector.spans() if s.name == kotel.SPAN_SIGN]
    assert len(fetches) == 2 and len(signs) == 1
    assert {s.status.code for s in fetches} == {1, 2}  # one OK, one ERROR
    assert {kotel.METRIC_FETCHES, kotel.METRIC_CACHE_HITS} <= collector.metric_names()
    raw = collector.raw
    assert raw, "the collector received nothing"
    assert len(signer.assertions) == 1 and signer.assertions[0].encode() not in raw
    assert signer.assertions[0].rsplit(".", 1)[1].encode() not in raw  # not even its signature
    assert token.value.encode() not in raw
    assert CANARY_SECRET.encode() not in raw and CANARY_SECRET[:16].encode() not in raw
