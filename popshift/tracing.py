"""W3C trace context across Kafka, so one trace follows a load spike from agent to BPF map.

The producer writes a ``traceparent`` header; the consumer's span is a child of the producer's.
Where a service aggregates (a pop-load of many heartbeats, a policy of several statuses, a table
write of a policy received earlier), the span that sends the result is a child of the newest of
what it was made of and *links* the others (:func:`here`, then ``made_of=`` on the bus's
``send``, :func:`made_of`): one trace runs from an agent's heartbeat to the BPF map write.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = list[tuple[str, str | bytes | None]]
_PROPAGATOR = TraceContextTextMapPropagator()


def setup_tracing(
    service_name: str, otlp_endpoint: str | None, zipkin_endpoint: str | None = None
) -> TracerProvider:
    """Install a process-wide provider; export over OTLP (Jaeger, ...) and/or as Zipkin JSON
    (Zipkin, whose trace UI ships in its server jar) when configured."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if zipkin_endpoint:
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        provider.add_span_processor(BatchSpanProcessor(ZipkinExporter(endpoint=zipkin_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def here() -> trace.SpanContext | None:
    """The current span's context, to link later; None outside a (sampled) span."""
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def made_of(
    inputs: Sequence[trace.SpanContext | None],
) -> tuple[Context | None, list[trace.Link]]:
    """The parent and links of a span whose result was made of ``inputs`` (oldest first): the
    newest input is its parent, so one trace runs from a heartbeat to the BPF map write; the
    others are links. (None, []) without inputs: the span goes in the current context."""
    valid = [c for c in inputs if c is not None]
    if not valid:
        return None, []
    parent = trace.set_span_in_context(trace.NonRecordingSpan(valid[-1]))
    return parent, [trace.Link(c) for c in valid[:-1]]


def inject(headers: Headers, context: Context | None = None) -> Headers:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return headers + [(k, v.encode()) for k, v in carrier.items()]


def extract(headers: Sequence[tuple[str, str | bytes | None]] | None) -> Context:
    carrier = {
        k: v.decode("ascii", "replace") if isinstance(v, bytes) else v
        for k, v in (headers or ())
        if v is not None
    }
    return _PROPAGATOR.extract(carrier)
