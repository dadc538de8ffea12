"""feedback_ingest: feedback.v1 in, pop-load.v1 out; a thin bus adapter around PopAggregator.

Validation is the bus's (schemas), so NaN, negative, over-capacity, wrong-version, oversized and
non-JSON feedback is dead-lettered with the reason before it reaches the aggregator; the
aggregator rejects unknown PoPs and servers the network description does not allow (an address
outside the PoP's server prefixes, a capacity above its bound: popshift/admission.py), which are
dead-lettered too, counted per reason (``stats()["dead_lettered[<reason>]"]``). Duplicates and
out-of-order heartbeats are valid messages that arrived late: they are counted and dropped, not
dead-lettered.

Kafka outages (the rule): liveness runs on a *feedback clock* per partition of feedback.v1
(clock.py), which advances with the broker's append time of the records (so an ingest that is
behind ages nobody for it) and only while feedback arrives on that partition. Once no feedback
at all arrived on a partition for more than one heartbeat interval (the largest interval any
heartbeat carried, at least ``POPSHIFT_HEARTBEAT_INTERVAL_S``), its clock stops; it resumes with
the next message, skipping the silence. So when the bus (or the ingest's link to it) is down, or
only the broker leading some partitions (until Kafka elects new leaders), no server of those
partitions' PoPs ages and none is marked down or forgotten, while a server that falls silent as
others of its partition keep reporting is marked down after K of its intervals as before. After
K intervals of silence on every partition the ingest counts a bus outage and publishes nothing
(its figures would be stale) until feedback returns; it then publishes the loads it had, with
the current time, not capacity 0. The price: if every server of all the PoPs of one partition
really died at once, the ingest would keep their last loads instead of marking them down.

Run: ``python -m services.feedback_ingest.ingest`` (SIGTERM/SIGINT stop it cleanly).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict

from opentelemetry import trace

from popshift import topics, tracing
from popshift.admission import Refused
from popshift.bus import Bus, DeliveryFailed, KafkaBus, Received, RejectMessage
from popshift.network import NetworkConfig, load_network
from popshift.process import (
    install_stop_signals,
    run_ticking,
    setup_logging,
    tune_gc,
    until_topics,
)
from services.feedback_ingest.aggregate import PopAggregator, TooManyServers, UnknownPop
from services.feedback_ingest.clock import FeedbackClock
from services.feedback_ingest.settings import IngestSettings

MAX_LINKS = 64  # span links a pop-load carries at most (a PoP's heartbeats in one interval)

log = logging.getLogger("popshift.ingest")

Clock = Callable[[], float]


class Ingest:
    """Consumes feedback, feeds the aggregator, publishes its ticks."""

    def __init__(
        self,
        settings: IngestSettings,
        network: NetworkConfig,
        bus: Bus,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.feedback = settings.topic(topics.FEEDBACK)
        self.pop_load = settings.topic(topics.POP_LOAD)
        self.aggregator = PopAggregator(
            network,
            interval_s=settings.heartbeat_interval_s,
            missed_heartbeats=settings.missed_heartbeats,
            forget_after_s=settings.forget_after_s,
            warmup_s=settings.ingest_warmup_s,
        )
        self.producer = bus.producer()
        # Offsets are committed only once the pop-loads that aggregate the messages are sent:
        # an ingest killed in between leaves them to the next owner of the partition, so every
        # heartbeat is counted in some pop-load (bench/cluster_faults.py).
        self.consumer = bus.consumer(
            settings.ingest_group,
            [self.feedback],
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=self.producer,
            hold_offsets=True,
            on_revoke=self._revoked,
        )
        self._partition_of: dict[str, int] = {}  # PoP -> the partition its feedback is on
        self.handed_over = 0  # PoPs given to another ingest in a rebalance
        self.published = 0
        # The feedback clocks (see the module's docstring): one per partition.
        self._gap_s = settings.heartbeat_interval_s  # the largest interval a heartbeat carried
        self._last_rx: float | None = None  # real time of the last feedback from anyone
        self._clocks: dict[int, FeedbackClock] = {}
        self.outages = 0  # silences of every server longer than K intervals
        # per PoP, the spans of the feedback since its last pop-load (popshift/tracing.py)
        self._links: dict[str, deque[trace.SpanContext]] = {}
        self.in_outage = False

    def feedback_clock(self, pop: str, now: float) -> float:
        """The liveness clock of ``pop``'s partition at real time ``now``."""
        clock = self._clocks.get(self._partition_of.get(pop, 0))
        return now if clock is None else clock.at(now, self._gap_s)

    def handle(self, received: Received) -> None:
        now = self.clock()
        self._last_rx = now
        clock = self._clocks.setdefault(received.partition, FeedbackClock())
        appended = received.timestamp_ms / 1000.0 if received.timestamp_ms > 0 else now
        heard_at = clock.heard(appended, now, self._gap_s)
        if self.in_outage:
            self.in_outage = False
            log.warning("feedback is back: liveness resumes, publishing again")
        pop = getattr(received.value, "pop", None)
        if pop is not None:
            self._partition_of[pop] = received.partition
            if (here := tracing.here()) is not None:
                self._links.setdefault(pop, deque(maxlen=MAX_LINKS)).append(here)
        interval = getattr(received.value, "interval_s", None)
        if interval is not None and interval > self._gap_s:
            self._gap_s = interval
        try:
            self.aggregator.observe(received.value, heard_at)
        except (UnknownPop, TooManyServers, Refused) as exc:
            raise RejectMessage(str(exc)) from exc

    def publish(self, now: float) -> int:
        silence = None if self._last_rx is None else now - self._last_rx
        if silence is not None and silence > self._gap_s * self.settings.missed_heartbeats:
            if not self.in_outage:
                self.in_outage = True
                self.outages += 1
                log.warning(
                    "no feedback from any server for %.1fs: a bus outage, not dead servers; "
                    "liveness paused, pop-load.v1 held until feedback returns",
                    silence,
                )
            return 0
        loads = self.aggregator.tick(now, clock=lambda pop: self.feedback_clock(pop, now))
        for load in loads:
            self.producer.send(
                self.pop_load,
                load.pop,
                load.model_copy(update={"at": now}),
                made_of=self._links.pop(load.pop, ()),  # the heartbeats it aggregates
            )
        self.published += len(loads)
        try:
            self.producer.flush(self.settings.publish_interval_s)
        except DeliveryFailed as exc:  # not released: re-read after a crash, sent again later
            log.warning("pop-loads not delivered yet: %s", exc)
            return len(loads)
        self.consumer.release()
        return len(loads)

    def _revoked(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions going to another ingest: report their PoPs one last time (so what was
        read is counted and committed), then forget them; the next owner reports them."""
        self.publish(self.clock())
        lost = {p for t, p in partitions if t == self.feedback.name}
        for pop, partition in list(self._partition_of.items()):
            if partition in lost:
                self.aggregator.forget(pop)
                del self._partition_of[pop]
                self._links.pop(pop, None)
                self.handed_over += 1
        log.info("rebalance: partitions %s go to another ingest", sorted(lost))

    def stats(self) -> dict[str, int]:
        bus = self.consumer.stats
        return {
            **{f"dead_lettered[{reason}]": n for reason, n in sorted(bus.reasons.items())},
            **asdict(self.aggregator.stats),
            "dead_lettered": bus.dead_lettered,
            "rejoined": bus.rejoined,
            "handled": bus.handled,
            "published": self.published,
            "outages": self.outages,
            "handed_over": self.handed_over,
            "send_dropped": self.producer.dropped,
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
        try:
            self.consumer.close()
        finally:
            try:
                self.producer.flush(5.0)
            except DeliveryFailed as exc:  # pop-loads are renewed every second: nothing to keep
                log.warning("stopping with pop-loads unsent: %s", exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.feedback_ingest.ingest`` (and ``popshift ingest``)."""
    del argv  # configured by POPSHIFT_* only
    setup_logging()
    settings = IngestSettings()
    settings.start_telemetry()
    network = load_network(settings.network_file)
    stop = threading.Event()
    install_stop_signals(stop)
    if not until_topics(settings, [topics.FEEDBACK, topics.POP_LOAD], "ingest", stop):
        return 0
    ingest = Ingest(settings, network, KafkaBus(settings.kafka()))
    tune_gc()
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
