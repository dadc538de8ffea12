"""The ingest's pure core: feedback in, one PopLoad per PoP out; liveness by missed heartbeats.

No Kafka and no clock of its own: ``observe`` and ``tick`` take ``now``, so tests drive time by
hand. Per-server heartbeats (patent (29), (80)) and feedback that a PoP management server already
aggregated (patent (42), (81)) land in the same per-server records, so analytics sees one shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from schemas.messages import (
    MAX_SERVERS_PER_POP,
    PopFeedback,
    PopLoad,
    ServerHeartbeat,
    ServerLoad,
    ServiceQos,
)


class UnknownPop(ValueError):
    """Feedback names a PoP that network.yaml does not list."""


class TooManyServers(ValueError):
    """A PoP would exceed the number of servers one pop-load.v1 message can carry."""


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REVIVED = "revived"  # accepted, and it brought a down server back (even with a lower seq)
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"


@dataclass
class AggregatorStats:
    accepted: int = 0
    revived: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    marked_down: int = 0
    forgotten: int = 0


@dataclass
class _Server:
    name: str
    address: IPv4Address | IPv6Address
    capacity_cores: float
    utilisation: float
    qos: ServiceQos | None
    received: float  # the ingest's clock: liveness
    reported_at: float  # the sender's clock: published as ServerLoad.last_seen (freshness)
    reported_healthy: bool = True
    down: bool = False
    published: ServerLoad | None = None  # built once per report (records are replaced on update)

    @property
    def healthy(self) -> bool:
        return self.reported_healthy and not self.down


@dataclass
class _Pop:
    servers: dict[str, _Server] = field(default_factory=dict)
    server_seq: dict[str, int] = field(default_factory=dict)
    feed_seq: int | None = None  # the PoP management server's own sequence
    feed_last_seen: float = 0.0


def _order(last: int | None, seq: int, was_down: bool) -> Outcome:
    """A sender that was down may have restarted with a lower sequence: take it back."""
    if last is None or seq > last or was_down:
        return Outcome.ACCEPTED
    return Outcome.DUPLICATE if seq == last else Outcome.OUT_OF_ORDER


class PopAggregator:
    """Per-server state of every PoP; ``tick`` turns it into pop-load.v1 messages."""

    def __init__(
        self,
        pops: Iterable[str],
        *,
        interval_s: float = 1.0,
        missed_heartbeats: int = 3,
        forget_after_s: float = 300.0,
    ) -> None:
        self._pops: dict[str, _Pop] = {p: _Pop() for p in pops}
        self.down_after_s = interval_s * missed_heartbeats
        self.forget_after_s = max(forget_after_s, self.down_after_s)
        self.stats = AggregatorStats()

    def _pop(self, name: str) -> _Pop:
        pop = self._pops.get(name)
        if pop is None:
            raise UnknownPop(f"unknown pop: {name}")
        return pop

    def observe(self, feedback: ServerHeartbeat | PopFeedback, now: float) -> Outcome:
        """Take one validated feedback message; raises UnknownPop / TooManyServers."""
        pop = self._pop(feedback.pop)
        if isinstance(feedback, ServerHeartbeat):
            known = pop.servers.get(feedback.server)
            was_down = known is not None and known.down
            outcome = _order(pop.server_seq.get(feedback.server), feedback.seq, was_down)
            if outcome is Outcome.ACCEPTED:
                self._update(pop, _from_heartbeat(feedback, now))
                pop.server_seq[feedback.server] = feedback.seq
                if was_down:
                    outcome = Outcome.REVIVED
        else:
            stale = now - pop.feed_last_seen > self.down_after_s
            outcome = _order(pop.feed_seq, feedback.seq, pop.feed_seq is not None and stale)
            if outcome is Outcome.ACCEPTED:
                for s in feedback.servers:
                    self._update(pop, _from_server_load(s, feedback, now))
                pop.feed_seq, pop.feed_last_seen = feedback.seq, now
        self._count(outcome)
        return outcome

    def _update(self, pop: _Pop, record: _Server) -> None:
        old = pop.servers.get(record.name)
        if old is None and len(pop.servers) >= MAX_SERVERS_PER_POP:
            raise TooManyServers(f"too many servers: over {MAX_SERVERS_PER_POP} in one PoP")
        if old is not None and old.down:
            self.stats.revived += 1
        pop.servers[record.name] = record

    def _count(self, outcome: Outcome) -> None:
        if outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1
        elif outcome is Outcome.OUT_OF_ORDER:
            self.stats.out_of_order += 1
        else:
            self.stats.accepted += 1

    def tick(self, now: float) -> list[PopLoad]:
        """Apply liveness at ``now`` and return the current load of every PoP that has servers."""
        loads = []
        for name, pop in self._pops.items():
            for server in list(pop.servers.values()):
                silent = now - server.received
                if silent > self.forget_after_s:
                    del pop.servers[server.name]
                    pop.server_seq.pop(server.name, None)
                    self.stats.forgotten += 1
                elif silent > self.down_after_s and not server.down:
                    server.down = True
                    self.stats.marked_down += 1
            if pop.servers:
                loads.append(_pop_load(name, pop, now))
        return loads


def _from_heartbeat(hb: ServerHeartbeat, now: float) -> _Server:
    return _Server(
        name=hb.server,
        address=hb.address,
        capacity_cores=hb.capacity_cores,
        # Normalised: the schema allows 5 % sampling slack over capacity; the PoP view does not.
        utilisation=min(1.0, hb.cpu_busy_cores / hb.capacity_cores),
        qos=hb.qos,
        received=now,
        reported_at=hb.sent_at,
    )


def _from_server_load(s: ServerLoad, feed: PopFeedback, now: float) -> _Server:
    return _Server(
        name=s.server,
        address=s.address,
        capacity_cores=s.capacity_cores,
        utilisation=s.utilisation,
        qos=s.qos,
        received=now,
        reported_at=s.last_seen or feed.sent_at,
        reported_healthy=s.healthy,
    )


def _pop_load(name: str, pop: _Pop, now: float) -> PopLoad:
    servers: list[ServerLoad] = []
    capacity = load = 0.0
    p95_weighted = p95_weight = 0.0
    ok_weighted = probes = 0.0
    for s in sorted(pop.servers.values(), key=lambda r: r.name):
        if s.published is None or s.published.healthy != s.healthy:
            # Validated on the way in and computed from finite values: not re-validated, it is
            # the ingest's hottest loop (one ServerLoad per server per report).
            s.published = ServerLoad.model_construct(
                schema_version=1,  # given, so that pydantic does not look up the default
                server=s.name,
                address=s.address,
                capacity_cores=s.capacity_cores,
                utilisation=s.utilisation,
                healthy=s.healthy,
                last_seen=s.reported_at,
                qos=s.qos,
            )
        servers.append(s.published)
        if not s.healthy:
            continue
        capacity += s.capacity_cores
        load += s.utilisation * s.capacity_cores
        if s.qos is not None:
            if s.qos.latency_p95_ms is not None:
                p95_weighted += s.qos.latency_p95_ms * s.capacity_cores
                p95_weight += s.capacity_cores
            ok_weighted += s.qos.success_rate * s.qos.probes
            probes += s.qos.probes
    return PopLoad(
        pop=name,
        at=now,
        servers=servers,
        healthy_capacity_cores=capacity,
        combined_load_cores=min(load, capacity),
        qos_p95_ms=p95_weighted / p95_weight if p95_weight else None,
        qos_success_rate=min(1.0, ok_weighted / probes) if probes else None,
    )
