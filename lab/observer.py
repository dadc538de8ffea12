"""The observer: a thread that records what the scenario's services decide and what the data
plane does about it, on one clock.

It follows pop-status.v1 and policies.v1 (under the run's topic prefix) and reads every edge's
table from its BPF map twice a second; each edge's table is recorded whenever it changed, with
the interval in which the change happened, so that every connection can later be judged by the
table in force when it started (lab.checks).
"""

from __future__ import annotations

import contextlib
import threading
import time

from confluent_kafka import KafkaException

from lab.record import PolicyRecord, Result, Sample, StatusRecord, TableRecord
from lab.settings import TIER
from lab.topology import Topology
from popshift import topics
from popshift.bus import Received, TypedConsumer, TypedProducer
from popshift.settings import Settings
from schemas.bucket import Flag
from schemas.messages import PolicyEvent, PopStatus
from services.forwarder.layout import BUCKET_BITS, Verdict
from services.forwarder.loader import Forwarder, Role


def open_forwarder(topo: Topology, host: str, role: Role) -> Forwarder:
    """The pinned program of a lab node (built for the lab's table size if not pinned yet)."""
    defines = {} if topo.table_bits == BUCKET_BITS else {"BUCKET_BITS": topo.table_bits}
    return Forwarder.open(role, host, pin_root=topo.pin_root(), defines=defines)


def node_counters(topo: Topology) -> dict[str, dict[str, int]]:
    """Every edge's and server's verdict counters, summed over tiers."""
    out: dict[str, dict[str, int]] = {}
    for pop in topo.pops:
        for host, role in [(pop.edge, Role.EDGE), *((s, Role.SERVER) for s in pop.servers)]:
            fwd = open_forwarder(topo, host, role)
            try:
                totals = dict.fromkeys((v.name.lower() for v in Verdict), 0)
                for per_tier in fwd.read_counters().values():
                    for v, c in per_tier.items():
                        totals[v.name.lower()] += c.packets
                out[host] = totals
            finally:
                fwd.close()
    return out


class Observer:
    """Follows pop-status.v1 and policies.v1 and the edges' maps; samples twice a second."""

    def __init__(self, result: Result, topo: Topology, run_id: str, interval_s: float = 0.5):
        self.result = result
        self.topo = topo
        self.interval_s = interval_s
        settings = Settings(topic_prefix=run_id)
        # Quiet: librdkafka logs every failed connect while Kafka is away (the chaos run)
        quiet = {"log_level": 2}
        self.producer = TypedProducer(settings.kafka(), extra_config=quiet)
        self.consumer = TypedConsumer(
            settings.kafka(),
            f"{run_id}-observer",
            [settings.topic(topics.POP_STATUS), settings.topic(topics.POLICIES)],
            dead_letter_producer=self.producer,
            extra_config=quiet,
        )
        self.status: dict[str, PopStatus] = {}
        self.policy: dict[str, PolicyEvent] = {}
        self.edges = {p.name: open_forwarder(topo, p.edge, Role.EDGE) for p in topo.pops}
        self.ids = {p.id: p.name for p in topo.pops}
        self.tables: dict[str, TableRecord] = {}  # the last table recorded per edge
        self.read_at: dict[str, float] = {}  # when each edge's table was last read
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self.error: BaseException | None = None

    def t(self, wall: float) -> float:
        return round(wall - self.result.epoch, 3)

    def _handle(self, received: Received) -> None:
        value = received.value
        with self.lock:
            if isinstance(value, PopStatus):
                self.status[value.pop] = value
                self.result.statuses.append(
                    StatusRecord(self.t(value.at), value.pop, value.state.value, value.utilisation)
                )
            elif isinstance(value, PolicyEvent):
                self.policy[value.source] = value
                self.result.policies.append(
                    PolicyRecord(
                        t=self.t(value.issued_at),
                        source=value.source,
                        action=value.action.value,
                        shares={s.destination: s.share for s in value.shares if s.tier == TIER},
                        version=value.version,
                        rule=value.reason.rule,
                        infeasible=value.reason.infeasible,
                    )
                )

    def _maps(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        away: dict[str, dict[str, int]] = {}
        draining: dict[str, int] = {}
        inter = int(Flag.INTER_POP)
        for pop, fwd in self.edges.items():
            image = fwd.read_table(TIER)
            read = self.t(time.time())
            flags = image["flags"]
            is_inter = (flags & inter) != 0
            is_away = is_inter & ((flags & int(Flag.AWAY)) != 0)
            dests = image["secondary_pop"][is_away].tolist()
            away[pop] = {self.ids.get(d, str(d)): dests.count(d) for d in set(dests)}
            draining[pop] = int((is_inter & ~is_away).sum())
            buckets = [int(b) for b in is_away.nonzero()[0]]
            table = {
                self.ids.get(d, str(d)): [b for b, x in zip(buckets, dests, strict=True) if x == d]
                for d in set(dests)
            }
            last = self.tables.get(pop)
            if last is None or last.away != table:
                # changed after the previous read (or first read): in (since, read]
                since = self.read_at.get(pop, read)
                self.tables[pop] = TableRecord(read, pop, table, since)
                with self.lock:
                    self.result.tables.append(self.tables[pop])
            self.read_at[pop] = read
        return away, draining

    def sample(self) -> Sample:
        away, draining = self._maps()
        with self.lock:
            s = Sample(
                t=self.t(time.time()),
                util={p: round(st.utilisation, 4) for p, st in self.status.items()},
                state={p: st.state.value for p, st in self.status.items()},
                shares={
                    src: {s.destination: s.share for s in ev.shares if s.tier == TIER}
                    for src, ev in self.policy.items()
                },
                away=away,
                draining=draining,
            )
            self.result.samples.append(s)
        return s

    def _run(self) -> None:
        next_sample = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self.consumer.poll_batch(self._handle, timeout=0.05)
                except KafkaException:  # Kafka away (the chaos run stops it): sample on
                    self._stop.wait(0.2)
                if time.monotonic() >= next_sample:
                    self.sample()
                    next_sample += self.interval_s
        except BaseException as exc:  # reported by the scenario, which then stops
            self.error = exc

    def start(self) -> Observer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        with contextlib.suppress(Exception):
            self.consumer.close()
        for fwd in self.edges.values():
            fwd.close()

    def latest(self) -> Sample:
        with self.lock:
            return self.result.samples[-1]
