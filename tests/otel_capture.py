"""An OpenTelemetry SDK capture for tests: in-memory span exporter and metric reader, with
readers for what they hold (span texts for the secret canaries, metric sums)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from keyless_m2m.integrations import opentelemetry as kotel

__all__ = ["Capture", "capture"]


@dataclass
class Capture:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: Any) -> float:
        """The sum of a counter's points (or the count of a histogram's) whose attributes
        include ``attributes`` (dots spelt as double underscores)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        total = 0.0
        for point in self.points(name):
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total

    def texts(self) -> list[str]:
        """Every text a span carries: name, attributes, events and their attributes,
        status description, as the exporter would send them."""
        out: list[str] = []
        for span in self.exporter.get_finished_spans():
            out.append(span.to_json())
            out.append(span.status.description or "")
            out.extend(str(v) for v in (span.attributes or {}).values())
            for event in span.events:
                out.append(event.name)
                out.extend(str(v) for v in (event.attributes or {}).values())
        return out


@contextmanager
def capture() -> Iterator[Capture]:
    """``instrument()`` with fresh SDK providers; ``uninstrument()`` after."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    kotel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Capture(exporter, reader, tracer_provider, meter_provider)
    finally:
        kotel.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()
