"""Sends one message through popshift.bus and consumes it, exporting both spans over OTLP.

Run by test_jaeger.py in a subprocess, because the process-wide tracer provider can be set
only once (the test session's provider is an in-memory one). Usage:

    POPSHIFT_OTLP_ENDPOINT=http://127.0.0.1:4318/v1/traces \\
        python -m tests.observability.emit_trace BOOTSTRAP PREFIX SERVICE_NAME   # from the repo

Prints one JSON line: the topic and the trace id / span id the consumer's handler ran in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from opentelemetry import trace

from popshift import topics as t
from popshift.bus import Received, TypedConsumer, TypedProducer, create_topics
from popshift.settings import Settings
from popshift.tracing import setup_tracing
from tests.samples import POP_LOAD


def main(bootstrap: str, prefix: str, service: str) -> int:
    kafka = Settings(kafka_bootstrap=bootstrap).kafka()
    endpoint = os.environ.get("POPSHIFT_OTLP_ENDPOINT")
    if not endpoint:
        print("POPSHIFT_OTLP_ENDPOINT is not set", file=sys.stderr)
        return 2
    provider = setup_tracing(service, endpoint)
    topic = dataclasses.replace(t.POP_LOAD, name=f"{prefix}.{t.POP_LOAD.name}")
    create_topics(kafka, [topic], partitions=1)

    producer = TypedProducer(kafka)
    producer.send(topic, POP_LOAD.pop, POP_LOAD)
    producer.flush()

    seen: list[dict[str, str]] = []

    def handler(msg: Received) -> None:
        ctx = trace.get_current_span().get_span_context()
        seen.append(
            {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
        )

    consumer = TypedConsumer(kafka, f"{prefix}-jaeger", [topic])
    deadline = time.monotonic() + 60
    try:
        while not seen:
            if time.monotonic() > deadline:
                print(f"message not consumed within 60 s: {consumer.stats}", file=sys.stderr)
                return 1
            consumer.poll_batch(handler, timeout=0.5)
    finally:
        consumer.close()

    # Export everything now. A failed export is only logged by the SDK: the test finds it out
    # from Jaeger, and the log (on stderr) tells why.
    if not provider.force_flush(timeout_millis=30_000):
        print("force_flush of the tracer provider timed out", file=sys.stderr)
        return 1
    provider.shutdown()
    print(json.dumps({"topic": topic.name, **seen[0]}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
