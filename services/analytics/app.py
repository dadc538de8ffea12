"""The analytics stream job: pop-load.v1 in, pop-status.v1 out, as a faust-streaming app.

faust only wires: one agent iterates over pop-load.v1, hands each record to :class:`Analytics`
(the bus's validation, then the pure ``Analyzer``: window, rules, hysteresis), which says what to
publish (a pop-status or a dead letter); a sink publishes it. The app
is built by ``build_app`` (no app bound at import), so tests and the lab build as many as they
need, each with its own id and topics.

Run: ``python -m services.analytics.app`` (a faust worker; SIGTERM/SIGINT stop it cleanly).
Restart: the analyzer's state is in memory; it is rebuilt from the next ``window_s`` seconds of
pop-load.v1 (ingest publishes every PoP every second), and until a PoP's window is whole again
nothing is said about it (services/analytics/window.py ``PopWindow.warm``): the engine keeps
its policies as they are meanwhile, and one sample never flags a PoP.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import faust
from opentelemetry import trace
from pydantic import Field

from popshift import metrics, topics, tracing
from popshift.bus import Outgoing, RejectMessage, dead_letter, validate
from popshift.credentials import SCRAM
from popshift.network import load_network
from popshift.process import install_stop_signals, setup_logging, tune_gc, until_topics
from popshift.settings import Settings
from schemas.messages import DeadLetter, PopLoad
from services.analytics.config import load_config
from services.analytics.window import Analyzer

log = logging.getLogger("popshift.analytics")
_tracer = trace.get_tracer("popshift.analytics")

AGENT_NAME = "analyse"


class AnalyticsSettings(Settings):
    """The analytics job's settings (POPSHIFT_* variables)."""

    default_principal: ClassVar[str] = "analytics"
    default_metrics_port: ClassVar[int] = 9463

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
    analytics_session_timeout_s: float = Field(
        10.0,
        ge=6.0,
        description="Kafka group session timeout of the faust worker (faust's default is 60 s): "
        "a killed worker's partitions go to a live or restarted one after this long.",
    )


class Analytics:
    """The adapter logic, apart from faust: one raw pop-load.v1 record in, what to publish out.

    Validation and dead letters are the bus's own (:func:`popshift.bus.validate`,
    :func:`popshift.bus.dead_letter`), with the same ``max_message_bytes`` as every consumer.
    """

    def __init__(self, settings: AnalyticsSettings, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self.pop_load = settings.topic(topics.POP_LOAD)
        self.pop_status = settings.topic(topics.POP_STATUS).name
        self.max_message_bytes = settings.max_message_bytes

    def decide(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        raw: bytes,
        headers: tracing.Headers,
    ) -> list[Outgoing]:
        """A pop-status when one is due, a dead letter for invalid input, else nothing."""
        parent = tracing.extract(headers)
        with _tracer.start_as_current_span(
            f"{self.pop_load.name} process", context=parent, kind=trace.SpanKind.CONSUMER
        ):
            try:
                load: PopLoad = validate(self.pop_load, raw, self.max_message_bytes)
            except RejectMessage as exc:
                return [dead_letter(self.pop_load, partition, offset, key, raw, headers, str(exc))]
            status = self.analyzer.observe(load)
            if status is None:
                return []
            value = status.model_dump_json().encode()
            return [Outgoing(self.pop_status, load.pop.encode(), value, tracing.inject([]))]


def _header_pairs(headers: Any) -> tracing.Headers:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), v) for k, v in items]


def build_app(settings: AnalyticsSettings, analyzer: Analyzer | None = None) -> faust.App:
    """A faust app whose one agent turns pop-load.v1 into pop-status.v1."""
    if analyzer is None:
        network = load_network(settings.network_file)
        analyzer = Analyzer(
            load_config(settings.analytics_config),
            {p.name: p.target_utilisation for p in network.pops},
        )
    analytics = Analytics(settings, analyzer)
    kafka = settings.kafka()
    app = faust.App(
        settings.analytics_app_id,
        broker=[f"kafka://{h.strip()}" for h in kafka.bootstrap.split(",")],
        broker_credentials=faust.SASLCredentials(
            username=kafka.username,
            password=kafka.password,
            ssl_context=kafka.ssl_context(),
            mechanism=SCRAM,
        ),
        store="memory://",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        web_enabled=False,
        web_bind="127.0.0.1",  # should the web server ever be enabled: not faust's 0.0.0.0
        datadir=settings.analytics_datadir,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.analytics_session_timeout_s,
        broker_heartbeat_interval=settings.analytics_session_timeout_s / 5.0,
        broker_rebalance_timeout=2.0 * settings.analytics_session_timeout_s,
    )
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    loads = app.topic(analytics.pop_load.name, **raw)
    sinks = {
        name: app.topic(name, **raw)
        for name in (analytics.pop_status, analytics.pop_load.dead_letter)
    }

    consumed = metrics.CONSUMED.labels(analytics.pop_load.name)

    async def publish(outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            if out.topic == analytics.pop_load.dead_letter:
                reason = DeadLetter.model_validate_json(out.value).reason
                log.warning("dead-lettered: %s", reason)
                metrics.DEAD_LETTERED.labels(analytics.pop_load.name, reason.split(":", 1)[0]).inc()
            else:
                metrics.PRODUCED.labels(out.topic).inc()
            headers = [(k, v) for k, v in out.headers if isinstance(v, bytes)]
            await sinks[out.topic].send(key=out.key, value=out.value, headers=headers)

    async def analyse(stream: faust.StreamT[bytes]) -> AsyncIterator[list[Outgoing]]:
        async for event in stream.events():
            message = event.message
            value = event.value if isinstance(event.value, bytes) else b""
            headers = _header_pairs(message.headers)
            consumed.inc()
            yield analytics.decide(message.partition, message.offset, event.key, value, headers)

    app.agent(loads, name=AGENT_NAME, sink=[publish])(analyse)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.analytics.app`` (and ``popshift analytics``)."""
    del argv  # configured by POPSHIFT_* only
    setup_logging()
    settings = AnalyticsSettings()
    settings.start_telemetry()
    # Kafka down at start: wait for it (faust's own start needs the broker), then start.
    stop = threading.Event()
    install_stop_signals(stop)
    if not until_topics(settings, [topics.POP_LOAD, topics.POP_STATUS], "analytics", stop):
        return 0
    app = build_app(settings)
    worker = faust.Worker(app, loglevel="INFO", stdout=sys.stderr, redirect_stdouts=False)
    tune_gc()
    log.info("analytics %s: %s", settings.analytics_app_id, settings.topic(topics.POP_LOAD).name)
    worker.execute_from_commandline()


if __name__ == "__main__":
    sys.exit(main())
