"""The analytics stream job: pop-load.v1 in, pop-status.v1 out, as a faust-streaming app.

faust only wires: one agent iterates over pop-load.v1, hands each message to the pure
``Analyzer`` (window, rules, hysteresis) and yields a ``Decision``; a sink publishes it. The app
is built by ``build_app`` (no app bound at import), so tests and the lab build as many as they
need, each with its own id and topics.

Run: ``python -m services.analytics.app`` (a faust worker; SIGTERM/SIGINT stop it cleanly).
Restart: the analyzer's state is in memory; it is rebuilt from the next ``window_s`` seconds of
pop-load.v1 (ingest publishes every PoP every second), and until then a PoP reports neutral.
"""

from __future__ import annotations

import base64
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from opentelemetry import trace
from pydantic import Field, ValidationError

from popshift import topics, tracing
from popshift.bus import create_topics
from popshift.network import load_network
from popshift.process import setup_logging, tune_gc
from popshift.settings import Settings
from schemas.messages import DeadLetter, PopLoad, PopStatus
from services.analytics.config import load_config
from services.analytics.window import Analyzer

log = logging.getLogger("popshift.analytics")
_tracer = trace.get_tracer("popshift.analytics")

AGENT_NAME = "analyse"


class AnalyticsSettings(Settings):
    """The analytics job's settings (POPSHIFT_* variables)."""

    analytics_app_id: str = Field(
        "popshift-analytics",
        description="faust app id: the Kafka consumer group and the prefix of faust's own topics.",
    )
    analytics_config: str = Field(
        "deploy/config/analytics.yaml",
        description="YAML of the per-PoP identification rules and hysteresis "
        "(services/analytics/config.py).",
    )
    analytics_datadir: str = Field(
        str(Path(tempfile.gettempdir()) / "popshift-analytics"),
        description="faust's data directory (nothing durable is kept there: store is memory://).",
    )


@dataclass(frozen=True)
class Decision:
    """What the agent made of one pop-load message; the sink performs it."""

    key: bytes | None
    status: PopStatus | None = None
    dead_letter: DeadLetter | None = None
    headers: list[tuple[str, bytes]] | None = None


def _header_pairs(headers: Any) -> list[tuple[str, str | bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), v) for k, v in items]


def decide(analyzer: Analyzer, event: faust.types.EventT[Any]) -> Decision:
    """Validate one pop-load message and run the analyzer; invalid input becomes a dead letter."""
    message = event.message
    raw: bytes = event.value if isinstance(event.value, bytes) else b""
    parent = tracing.extract(_header_pairs(message.headers))
    with _tracer.start_as_current_span(
        f"{message.topic} process", context=parent, kind=trace.SpanKind.CONSUMER
    ):
        try:
            load = PopLoad.model_validate_json(raw)
        except ValidationError as exc:
            reason = "invalid: " + "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
            )
            return Decision(
                key=event.key,
                dead_letter=DeadLetter(
                    source_topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    reason=reason[:4096],
                    key_b64=base64.b64encode(event.key).decode() if event.key else None,
                    payload_b64=base64.b64encode(raw).decode(),
                    at=time.time(),
                ),
            )
        status = analyzer.observe(load)
        headers = [(k, v) for k, v in tracing.inject([]) if isinstance(v, bytes)]
        return Decision(key=load.pop.encode(), status=status, headers=headers)


def build_app(settings: AnalyticsSettings, analyzer: Analyzer | None = None) -> faust.App:
    """A faust app whose one agent turns pop-load.v1 into pop-status.v1."""
    if analyzer is None:
        network = load_network(settings.network_file)
        analyzer = Analyzer(
            load_config(settings.analytics_config),
            {p.name: p.target_utilisation for p in network.pops},
        )
    app = faust.App(
        settings.analytics_app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        store="memory://",
        topic_partitions=settings.topic_partitions,
        web_enabled=False,
        datadir=settings.analytics_datadir,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    pop_load = settings.topic(topics.POP_LOAD)
    loads = app.topic(pop_load.name, **raw)
    statuses = app.topic(settings.topic(topics.POP_STATUS).name, **raw)
    dead_letters = app.topic(pop_load.dead_letter, **raw)

    async def publish(decision: Decision) -> None:
        if decision.status is not None:
            await statuses.send(
                key=decision.key,
                value=decision.status.model_dump_json().encode(),
                headers=decision.headers,
            )
        if decision.dead_letter is not None:
            log.warning("dead-lettered: %s", decision.dead_letter.reason)
            await dead_letters.send(
                key=decision.key, value=decision.dead_letter.model_dump_json().encode()
            )

    async def analyse(stream: faust.StreamT[bytes]) -> AsyncIterator[Decision]:
        async for event in stream.events():
            yield decide(analyzer, event)

    app.agent(loads, name=AGENT_NAME, sink=[publish])(analyse)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.analytics.app`` (and ``popshift analytics``)."""
    del argv  # configured by POPSHIFT_* only
    setup_logging()
    settings = AnalyticsSettings()
    create_topics(
        settings.kafka_bootstrap,
        [settings.topic(topics.POP_LOAD), settings.topic(topics.POP_STATUS)],
        settings.topic_partitions,
    )
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO", stdout=sys.stderr, redirect_stdouts=False)
    tune_gc()
    log.info("analytics %s: %s", settings.analytics_app_id, settings.topic(topics.POP_LOAD).name)
    worker.execute_from_commandline()


if __name__ == "__main__":
    sys.exit(main())
