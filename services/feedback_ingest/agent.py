"""The compute-server agent: every interval, one heartbeat with CPU, QoS and identity.

Patent (29), (42), (80)-(81): each compute server pushes its feedback at a regular interval. The
agent must never hurt the service it measures, so nothing in its loop waits on Kafka: at most
``max_in_flight`` heartbeats are inside the Kafka client; the rest wait in a bounded buffer that
drops its oldest entry (and counts it) when full, e.g. while the broker is unreachable.

A Kafka client that stops making progress (heartbeats in flight, none acknowledged or failed
for ``producer_stall_s``) is replaced by a fresh one and its in-flight heartbeats are given up
(counted): a client stuck on a connection that a broker restart left half-open would otherwise
keep this server silent after Kafka is back, and the ingest would take it for dead. During an
outage that costs at most ``max_in_flight`` old heartbeats per stall; the buffer keeps the rest.

Sequence numbers start at the start time in milliseconds, so a restarted agent keeps counting
upwards and the ingest does not take its heartbeats for stale ones.

Run: ``python -m services.feedback_ingest.agent --pop a --server a1 --address 10.0.0.1``
(flags or POPSHIFT_* variables; SIGTERM/SIGINT stop it after a short final flush).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic_settings import CliApp

from popshift import topics
from popshift.bus import DeliveryFailed, KafkaBus, Producer
from popshift.process import install_stop_signals, setup_logging
from schemas.messages import ServerHeartbeat
from services.feedback_ingest.cpu import CgroupCpu, CpuSampler, ProcStatCpu
from services.feedback_ingest.probe import Probe, make_check
from services.feedback_ingest.settings import AgentSettings

log = logging.getLogger("popshift.agent")


class BoundedBuffer:
    """FIFO of heartbeats not yet handed to Kafka; when full, the oldest goes (counted)."""

    def __init__(self, size: int) -> None:
        self._items: deque[ServerHeartbeat] = deque(maxlen=size)
        self.dropped = 0

    def push(self, item: ServerHeartbeat) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)

    def pop(self) -> ServerHeartbeat:
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class AgentStats:
    beats: int = 0
    sent: int = 0
    buffered: int = 0
    dropped: int = 0
    delivered: int = 0
    failed: int = 0
    abandoned: int = 0  # in flight in a stalled client that was replaced
    producer_restarts: int = 0


class Agent:
    """Builds heartbeats and hands them to Kafka without ever waiting for it."""

    def __init__(
        self,
        settings: AgentSettings,
        cpu: CpuSampler,
        producer: Producer,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.time,
        new_producer: Callable[[], Producer] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cpu = cpu
        self.probe = probe
        self.producer = producer
        self.clock = clock
        self.topic = settings.topic(topics.FEEDBACK)
        self.capacity = settings.capacity_cores or cpu.capacity_cores
        self.buffer = BoundedBuffer(settings.buffer_size)
        self.seq = self._first_seq = int(clock() * 1000)
        self._sent = 0  # to the current client
        self._new_producer = new_producer
        self._monotonic = monotonic
        self._progress = (0, monotonic())  # (delivered + failed, when it last changed)
        self._before = AgentStats()  # what earlier (replaced) clients sent and delivered

    @property
    def in_flight(self) -> int:
        return self._sent - self.producer.delivered - self.producer.failed

    def _replace_if_stalled(self) -> None:
        done, since = self._progress
        now = self._monotonic()
        if self.producer.delivered + self.producer.failed != done or self.in_flight == 0:
            self._progress = (self.producer.delivered + self.producer.failed, now)
            return
        if self._new_producer is None or now - since < self.settings.producer_stall_s:
            return
        log.warning(
            "Kafka client made no progress for %.0fs with %d heartbeats in flight: replacing it",
            now - since,
            self.in_flight,
        )
        b = self._before
        b.sent += self._sent
        b.delivered += self.producer.delivered
        b.failed += self.producer.failed
        b.abandoned += self.in_flight
        b.producer_restarts += 1
        self.producer = self._new_producer()
        self._sent = 0
        self._progress = (0, now)

    def beat(self) -> ServerHeartbeat:
        """Measure one interval, queue its heartbeat and hand Kafka what it may take now."""
        self.seq += 1
        # Clamped: a sampler's jitter, or a configured capacity below what the machine has,
        # must not turn into a heartbeat the ingest rejects.
        busy = min(self.cpu.sample(), self.capacity)
        heartbeat = ServerHeartbeat(
            pop=self.settings.pop,
            server=self.settings.server,
            address=self.settings.address,
            seq=self.seq,
            sent_at=self.clock(),
            capacity_cores=self.capacity,
            cpu_busy_cores=busy,
            qos=self.probe.take() if self.probe else None,
            interval_s=self.settings.interval_s,
        )
        self.buffer.push(heartbeat)
        self.pump()
        return heartbeat

    def pump(self) -> None:
        self.producer.poll(0)
        self._replace_if_stalled()
        while len(self.buffer) and self.in_flight < self.settings.max_in_flight:
            heartbeat = self.buffer.pop()
            self.producer.send(self.topic, heartbeat.pop, heartbeat)
            self._sent += 1

    def stats(self) -> AgentStats:
        b = self._before
        return AgentStats(
            beats=self.seq - self._first_seq,
            sent=b.sent + self._sent,
            buffered=len(self.buffer),
            dropped=self.buffer.dropped,
            delivered=b.delivered + self.producer.delivered,
            failed=b.failed + self.producer.failed,
            abandoned=b.abandoned,
            producer_restarts=b.producer_restarts,
        )

    def run(self, stop: threading.Event, log_every_s: float = 60.0) -> None:
        """Beat every ``interval_s`` on a fixed schedule (no drift) until ``stop``."""
        interval = self.settings.interval_s
        next_beat = time.monotonic() + interval
        next_log = time.monotonic() + log_every_s
        while not stop.wait(max(0.0, next_beat - time.monotonic())):
            self.beat()
            now = time.monotonic()
            next_beat += interval
            if next_beat < now:  # suspended or starved: skip the missed beats, do not burst
                next_beat = now + interval
            if now >= next_log:
                log.info("agent %s", self.stats())
                next_log = now + log_every_s


def build_cpu(settings: AgentSettings) -> CpuSampler:
    return CgroupCpu(settings.cgroup) if settings.cgroup else ProcStatCpu()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.feedback_ingest.agent`` (and ``popshift agent``)."""
    setup_logging()
    settings = CliApp.run(AgentSettings, cli_args=list(argv if argv is not None else sys.argv[1:]))
    settings.start_telemetry()
    probe = None
    if settings.probe:
        check = make_check(settings.probe, settings.probe_timeout_s)
        probe = Probe(check, settings.probe_interval_s, settings.probe_timeout_s).start()
    bus = KafkaBus(settings.kafka())
    agent = Agent(settings, build_cpu(settings), bus.producer(), probe, new_producer=bus.producer)
    stop = threading.Event()
    install_stop_signals(stop)
    log.info(
        "agent %s/%s (%s, %.2f cores) -> %s every %.2fs",
        settings.pop,
        settings.server,
        settings.address,
        agent.capacity,
        agent.topic.name,
        settings.interval_s,
    )
    try:
        agent.run(stop)
    finally:
        if probe:
            probe.stop()
        agent.pump()
        try:
            agent.producer.flush(2.0)
        except DeliveryFailed as exc:
            log.warning("agent stopping with undelivered heartbeats: %s", exc)
        log.info("agent stopped %s", agent.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main())
