"""feedback_ingest: feedback.v1 in, pop-load.v1 out; a thin bus adapter around PopAggregator.

Validation is the bus's (schemas), so NaN, negative, over-capacity, wrong-version, oversized and
non-JSON feedback is dead-lettered with the reason before it reaches the aggregator; the
aggregator rejects unknown PoPs, which are dead-lettered too. Duplicates and out-of-order
heartbeats are valid messages that arrived late: they are counted and dropped, not dead-lettered.

Run: ``python -m services.feedback_ingest.ingest`` (SIGTERM/SIGINT stop it cleanly).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from popshift import topics
from popshift.bus import Bus, KafkaBus, Received, RejectMessage, create_topics
from popshift.network import load_network
from popshift.process import install_stop_signals, run_ticking, setup_logging, tune_gc
from services.feedback_ingest.aggregate import PopAggregator, TooManyServers, UnknownPop
from services.feedback_ingest.settings import IngestSettings

log = logging.getLogger("popshift.ingest")

Clock = Callable[[], float]


class Ingest:
    """Consumes feedback, feeds the aggregator, publishes its ticks."""

    def __init__(
        self,
        settings: IngestSettings,
        pops: Sequence[str],
        bus: Bus,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.feedback = settings.topic(topics.FEEDBACK)
        self.pop_load = settings.topic(topics.POP_LOAD)
        self.aggregator = PopAggregator(
            pops,
            interval_s=settings.heartbeat_interval_s,
            missed_heartbeats=settings.missed_heartbeats,
            forget_after_s=settings.forget_after_s,
        )
        self.producer = bus.producer()
        self.consumer = bus.consumer(
            settings.ingest_group,
            [self.feedback],
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=self.producer,
        )
        self.published = 0

    def handle(self, received: Received) -> None:
        try:
            self.aggregator.observe(received.value, self.clock())
        except (UnknownPop, TooManyServers) as exc:
            raise RejectMessage(str(exc)) from exc

    def publish(self, now: float) -> int:
        loads = self.aggregator.tick(now)
        for load in loads:
            self.producer.send(self.pop_load, load.pop, load)
        self.published += len(loads)
        return len(loads)

    def stats(self) -> dict[str, int]:
        bus = self.consumer.stats
        return {
            **asdict(self.aggregator.stats),
            "dead_lettered": bus.dead_lettered,
            "handled": bus.handled,
            "published": self.published,
        }

    def run(self, stop: threading.Event, log_every_s: float = 10.0) -> None:
        """Poll and publish until ``stop`` is set; never sleeps past the next publish tick."""
        next_log = self.clock() + log_every_s

        def poll(wait: float) -> None:
            self.consumer.poll_batch(
                self.handle, timeout=wait, max_messages=self.settings.ingest_batch
            )
            self.producer.poll(0)

        def tick() -> None:
            nonlocal next_log
            now = self.clock()
            self.publish(now)
            if now >= next_log:
                log.info("ingest %s", self.stats())
                next_log = now + log_every_s

        run_ticking(poll, tick, self.settings.publish_interval_s, stop, self.clock)

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.feedback_ingest.ingest`` (and ``popshift ingest``)."""
    del argv  # configured by POPSHIFT_* only
    setup_logging()
    settings = IngestSettings()
    network = load_network(settings.network_file)
    create_topics(
        settings.kafka_bootstrap,
        [settings.topic(topics.FEEDBACK), settings.topic(topics.POP_LOAD)],
        settings.topic_partitions,
    )
    ingest = Ingest(settings, network.pop_names, KafkaBus(settings.kafka_bootstrap))
    tune_gc()
    stop = threading.Event()
    install_stop_signals(stop)
    log.info(
        "ingest %s -> %s for %d PoPs", ingest.feedback.name, ingest.pop_load.name, len(network.pops)
    )
    try:
        ingest.run(stop)
    finally:
        ingest.close()
        log.info("ingest stopped %s", ingest.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
