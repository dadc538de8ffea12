"""The ingest's pure core: feedback in, one PopLoad per PoP out; liveness by missed heartbeats.

No Kafka and no clock of its own: ``observe`` and ``tick`` take ``now``, so tests drive time by
hand. Per-server heartbeats (patent (29), (80)) and feedback that a PoP management server already
aggregated (patent (42), (81)) land in the same per-server records, so analytics sees one shape.
Every server a message names is checked against the network description first
(popshift/admission.py: address in the PoP's server prefixes, capacity within its bound); a
message with one bad server is refused whole and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from popshift.admission import check_address, check_capacity
from popshift.network import NetworkConfig, PopConfig
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


class _Server:
    """One server's latest report; updated in place (tens of thousands of updates a second)."""

    __slots__ = (
        "address",
        "capacity_cores",
        "down",
        "down_after_s",
        "heartbeats",
        "name",
        "published",
        "qos",
        "received",
        "reported_at",
        "reported_healthy",
        "seq_first",
        "seq_last",
        "utilisation",
    )

    def __init__(self, name: str, down_after_s: float) -> None:
        self.name = name
        self.down_after_s = down_after_s  # K of this server's own heartbeat intervals
        self.address = ""
        self.capacity_cores = 0.0
        self.utilisation = 0.0
        self.qos: ServiceQos | None = None
        self.received = 0.0  # the ingest's clock: liveness
        self.reported_at = 0.0  # the sender's clock: published as ServerLoad.last_seen
        self.reported_healthy = True
        self.down = False
        self.published: ServerLoad | None = None  # built at most once per report
        # The heartbeats taken since the last report was built: every heartbeat is accounted
        # for in some pop-load (bench/cluster_faults.py checks none is lost).
        self.seq_first: int | None = None
        self.seq_last: int | None = None
        self.heartbeats = 0

    @property
    def healthy(self) -> bool:
        return self.reported_healthy and not self.down

    def heartbeat(self, hb: ServerHeartbeat, now: float, missed_heartbeats: int) -> None:
        if hb.interval_s is not None:
            self.down_after_s = hb.interval_s * missed_heartbeats
        self.address = hb.address
        self.capacity_cores = hb.capacity_cores
        # Normalised: the schema allows 5 % sampling slack over capacity; the PoP view does not.
        self.utilisation = min(1.0, hb.cpu_busy_cores / hb.capacity_cores)
        self.qos = hb.qos
        self.received = now
        self.reported_at = hb.sent_at
        self.reported_healthy = True
        self.down = False
        self.published = None
        if self.seq_first is None:
            self.seq_first = hb.seq
        self.seq_last = hb.seq
        self.heartbeats += 1

    def server_load(self, s: ServerLoad, feed: PopFeedback, now: float) -> None:
        self.address = s.address
        self.capacity_cores = s.capacity_cores
        self.utilisation = s.utilisation
        self.qos = s.qos
        self.received = now
        self.reported_at = s.last_seen or feed.sent_at
        self.reported_healthy = s.healthy
        self.down = False
        self.published = None


@dataclass
class _Pop:
    config: PopConfig
    servers: dict[str, _Server] = field(default_factory=dict)
    server_seq: dict[str, int] = field(default_factory=dict)
    feed_seq: int | None = None  # the PoP management server's own sequence
    feed_last_seen: float = 0.0
    ordered: list[_Server] | None = None  # servers by name; None after one joined or left
    first_seen: float | None = None  # since the start, or since the PoP was forgotten


def _order(last: int | None, seq: int, was_down: bool) -> Outcome:
    """A sender that was down may have restarted with a lower sequence: take it back."""
    if last is None or seq > last or was_down:
        return Outcome.ACCEPTED
    return Outcome.DUPLICATE if seq == last else Outcome.OUT_OF_ORDER


class PopAggregator:
    """Per-server state of every PoP; ``tick`` turns it into pop-load.v1 messages."""

    def __init__(
        self,
        network: NetworkConfig,
        *,
        interval_s: float = 1.0,
        missed_heartbeats: int = 3,
        forget_after_s: float = 300.0,
        warmup_s: float = 0.0,
    ) -> None:
        self.network = network
        self._pops: dict[str, _Pop] = {p.name: _Pop(p) for p in network.pops}
        self.missed_heartbeats = missed_heartbeats
        self.down_after_s = interval_s * missed_heartbeats  # unless a heartbeat says its interval
        self.forget_after_s = forget_after_s  # never before the server is down
        self.warmup_s = warmup_s
        """A PoP's first pop-load waits this long after its first feedback: an ingest that just
        took over a PoP's partition has heard only some of its servers (a PoP of 100 servers
        half heard would look half dead)."""
        self.stats = AggregatorStats()

    def observe(self, feedback: ServerHeartbeat | PopFeedback, now: float) -> Outcome:
        """Take one validated feedback message; raises UnknownPop / TooManyServers, or Refused
        (popshift/admission.py) for a server the network description does not allow."""
        pop = self._pops.get(feedback.pop)
        if pop is None:
            raise UnknownPop(f"unknown pop: {feedback.pop}")
        if pop.first_seen is None:
            pop.first_seen = now
        if isinstance(feedback, ServerHeartbeat):
            name = feedback.server
            known = pop.servers.get(name)
            self._check(pop, name, feedback.address, feedback.capacity_cores, known)
            was_down = known is not None and known.down
            outcome = _order(pop.server_seq.get(name), feedback.seq, was_down)
            if outcome is Outcome.ACCEPTED:
                record = self._record(pop, name, known)
                record.heartbeat(feedback, now, self.missed_heartbeats)
                pop.server_seq[name] = feedback.seq
                if was_down:
                    outcome = Outcome.REVIVED
        else:
            for s in feedback.servers:
                self._check(pop, s.server, s.address, s.capacity_cores, pop.servers.get(s.server))
            stale = now - pop.feed_last_seen > self.down_after_s
            outcome = _order(pop.feed_seq, feedback.seq, pop.feed_seq is not None and stale)
            if outcome is Outcome.ACCEPTED:
                for s in feedback.servers:
                    known = pop.servers.get(s.server)
                    self._record(pop, s.server, known).server_load(s, feedback, now)
                pop.feed_seq, pop.feed_last_seen = feedback.seq, now
        self._count(outcome)
        return outcome

    def _check(
        self, pop: _Pop, name: str, address: str, capacity: float, known: _Server | None
    ) -> None:
        """The server's claims against the network; an address already accepted for this
        server is not parsed again (tens of thousands of heartbeats a second)."""
        if known is None or known.address != address:
            check_address(self.network, pop.config, name, address)
        check_capacity(pop.config, name, capacity)

    def _record(self, pop: _Pop, name: str, known: _Server | None) -> _Server:
        """The record to update in place: the known one, or a new one if there is room."""
        if known is None:
            if len(pop.servers) >= MAX_SERVERS_PER_POP:
                raise TooManyServers(f"too many servers: over {MAX_SERVERS_PER_POP} in one PoP")
            known = pop.servers[name] = _Server(name, self.down_after_s)
            pop.ordered = None
        elif known.down:
            self.stats.revived += 1
        return known

    def _count(self, outcome: Outcome) -> None:
        if outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1
        elif outcome is Outcome.OUT_OF_ORDER:
            self.stats.out_of_order += 1
        else:
            self.stats.accepted += 1

    def forget(self, pop: str) -> None:
        """Drop what is known of ``pop`` (its partition went to another ingest, which reports
        it from now on: this one would otherwise see its servers fall silent and mark them
        down)."""
        state = self._pops.get(pop)
        if state is not None:
            self._pops[pop] = _Pop(state.config)

    def tick(self, now: float, clock: Callable[[str], float] | None = None) -> list[PopLoad]:
        """Apply liveness at ``now`` (or at ``clock(pop)``, a PoP's own liveness clock) and
        return the current load of every PoP that has servers."""
        loads = []
        for name, pop in self._pops.items():
            if pop.servers:
                load = self._pop_load(name, pop, now if clock is None else clock(name))
                if load is not None:
                    loads.append(load)
        return loads

    def _pop_load(self, name: str, pop: _Pop, now: float) -> PopLoad | None:
        """Liveness and the PoP's load in one pass over its servers (every server, every tick)."""
        if pop.first_seen is not None and now - pop.first_seen < self.warmup_s:
            return None
        ordered = pop.ordered
        if ordered is None:
            ordered = pop.ordered = sorted(pop.servers.values(), key=_name)
        servers: list[ServerLoad] = []
        capacity = load = 0.0
        p95_weighted = p95_weight = 0.0
        ok_weighted = probes = 0.0
        forgotten = False
        for s in ordered:
            silent = now - s.received
            if silent > s.down_after_s:
                if silent > self.forget_after_s:
                    del pop.servers[s.name]
                    pop.server_seq.pop(s.name, None)
                    self.stats.forgotten += 1
                    forgotten = True
                    continue
                if not s.down:
                    s.down = True
                    self.stats.marked_down += 1
            healthy = s.reported_healthy and not s.down
            published = s.published
            if published is None or published.healthy != healthy:
                # From validated, finite values; validating again (in Rust) is cheaper than
                # model_construct and keeps what is published a valid message.
                published = s.published = ServerLoad.model_validate(
                    {
                        "server": s.name,
                        "address": s.address,
                        "capacity_cores": s.capacity_cores,
                        "utilisation": s.utilisation,
                        "healthy": healthy,
                        "last_seen": s.reported_at,
                        "qos": s.qos,
                        "seq_first": s.seq_first,
                        "seq_last": s.seq_last,
                        "heartbeats": s.heartbeats,
                    }
                )
                s.seq_first, s.seq_last, s.heartbeats = None, None, 0
            servers.append(published)
            if not healthy:
                continue
            capacity += s.capacity_cores
            load += s.utilisation * s.capacity_cores
            qos = s.qos
            if qos is not None:
                if qos.latency_p95_ms is not None:
                    p95_weighted += qos.latency_p95_ms * s.capacity_cores
                    p95_weight += s.capacity_cores
                ok_weighted += qos.success_rate * qos.probes
                probes += qos.probes
        if forgotten:
            pop.ordered = None
        if not servers:
            return None
        return PopLoad(
            pop=name,
            at=now,
            servers=servers,
            healthy_capacity_cores=capacity,
            combined_load_cores=min(load, capacity),
            qos_p95_ms=p95_weighted / p95_weight if p95_weight else None,
            qos_success_rate=min(1.0, ok_weighted / probes) if probes else None,
        )


def _name(server: _Server) -> str:
    return server.name
