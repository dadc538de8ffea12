"""What a scenario run produced: one record, saved as JSON, and how to read it.

The harness records a run as a `Result` (samples of load and shares, policy events, edge
tables, every load-generator record, the data planes' counters); the timeline, the plot, the
end-to-end checks and the benchmark's times all come from that one record (lab.report,
lab.checks), so what the demo prints is exactly what the tests assert. Pure, so it is
unit-tested without root.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.app.results import Kind, Outcome, Record


@dataclass
class Sample:
    """The state of the system at one instant `t` (seconds since the run's epoch)."""

    t: float
    util: dict[str, float]  # PoP -> utilisation in the latest pop-status
    state: dict[str, str]  # PoP -> shed / can_take / neutral
    shares: dict[str, dict[str, float]]  # source -> destination -> share in force (tier 0)
    away: dict[str, dict[str, int]]  # edge's PoP -> destination PoP -> buckets away in its maps
    draining: dict[str, int]  # edge's PoP -> buckets keeping an inter-PoP secondary, back


@dataclass
class PolicyRecord:
    t: float  # issued_at, since the epoch
    source: str
    action: str
    shares: dict[str, float]  # destination -> share (tier 0)
    version: int
    rule: str
    infeasible: bool = False  # the reason says the engine could not meet the target (least bad)


@dataclass
class StatusRecord:
    t: float
    pop: str
    state: str
    util: float


@dataclass
class TableRecord:
    """One edge's forwarding table (the scenario's tier) as read from its BPF map at `t`, kept
    whenever it changed: which buckets send new connections away, to which PoP."""

    t: float
    pop: str
    away: dict[str, list[int]]  # destination PoP -> bucket indexes with direction away
    since: float  # the read before, which still showed the previous table: changed in (since, t]


@dataclass
class Traffic:
    """One load-generator record and who made it: the client region and which generator."""

    region: str
    tag: str  # "main": from the start; "late": long connections opened while A forwards
    record: Record


@dataclass
class Result:
    epoch: float  # wall time that t = 0 stands for
    pops: list[str]
    table_bits: int
    marks: dict[str, float] = field(default_factory=dict)  # named instants, since the epoch
    samples: list[Sample] = field(default_factory=list)
    policies: list[PolicyRecord] = field(default_factory=list)
    statuses: list[StatusRecord] = field(default_factory=list)
    traffic: list[Traffic] = field(default_factory=list)
    # node -> verdict -> packets, summed over tiers, at the marks "load_on" and "end"
    counters: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    tables: list[TableRecord] = field(default_factory=list)  # in time order, per change
    # "vip" and "client-<region>": the addresses of the flows' 5-tuples (for the bucket hash)
    addresses: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        raw = asdict(self)
        for t, entry in zip(self.traffic, raw["traffic"], strict=True):
            entry["record"] = json.loads(t.record.to_json())
        return json.dumps(raw, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Result:
        raw = json.loads(text)
        return cls(
            epoch=raw["epoch"],
            pops=raw["pops"],
            table_bits=raw["table_bits"],
            marks=raw["marks"],
            samples=[Sample(**s) for s in raw["samples"]],
            policies=[PolicyRecord(**p) for p in raw["policies"]],
            statuses=[StatusRecord(**s) for s in raw["statuses"]],
            traffic=[
                Traffic(t["region"], t["tag"], Record.from_json(json.dumps(t["record"])))
                for t in raw["traffic"]
            ],
            counters=raw["counters"],
            settings=raw.get("settings", {}),
            tables=[TableRecord(**x) for x in raw.get("tables", [])],
            addresses=raw.get("addresses", {}),
        )

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")


# -- reading the record -----------------------------------------------------------------------


def shorts(result: Result, region: str, t0: float, t1: float) -> list[Record]:
    """Short requests from `region` that started in [t0, t1)."""
    return [
        t.record
        for t in result.traffic
        if t.region == region and t.record.kind is Kind.SHORT and t0 <= t.record.start < t1
    ]


def longs(result: Result, tag: str | None = None) -> list[Traffic]:
    return [t for t in result.traffic if t.record.kind is Kind.LONG and tag in (None, t.tag)]


def share_processed(records: Sequence[Record], pop: str) -> tuple[int, float]:
    """(answered requests, share of them answered by `pop`)."""
    ok = [r for r in records if r.outcome is Outcome.OK]
    if not ok:
        return 0, 0.0
    return len(ok), sum(1 for r in ok if r.pop == pop) / len(ok)


def policy_in_force(result: Result, source: str, at: float) -> dict[str, float]:
    shares: dict[str, float] = {}
    for p in result.policies:
        if p.source == source and p.t <= at:
            shares = p.shares
    return shares


def share_changes(result: Result, source: str | None = None) -> list[PolicyRecord]:
    """The policy events that changed their source's shares, in time order: a renewal (the same
    shares as a new version, the policy's lease) is not a change."""
    last: dict[str, dict[str, float]] = {}
    changes = []
    for p in sorted(result.policies, key=lambda p: p.t):
        if source is not None and p.source != source:
            continue
        if p.shares != last.get(p.source):
            changes.append(p)
        last[p.source] = p.shares
    return changes


def first_time(result: Result, since: float) -> dict[str, float | None]:
    """The benchmark's instants after `since` (load start): PoP a flagged, a's policy emitted,
    a's edge maps sending buckets away, the first new connection from region a answered by b.
    """
    flagged = next(
        (s.t for s in result.statuses if s.pop == "a" and s.state == "shed" and s.t >= since),
        None,
    )
    emitted = next(
        (p.t for p in result.policies if p.source == "a" and p.shares and p.t >= since), None
    )
    applied = next(
        (s.t for s in result.samples if s.t >= since and sum(s.away.get("a", {}).values()) > 0),
        None,
    )
    moved = [
        r.start + r.duration_s
        for r in shorts(result, "a", since, float("inf"))
        if r.pop == "b" and r.outcome is Outcome.OK
    ]
    return {
        "flagged": None if flagged is None else flagged - since,
        "policy": None if emitted is None else emitted - since,
        "applied": None if applied is None else applied - since,
        "first_in_b": None if not moved else min(moved) - since,
    }


def counter_delta(result: Result, node: str, verdict: str) -> int:
    start = result.counters.get("load_on", {}).get(node, {})
    end = result.counters.get("end", {}).get(node, {})
    return end.get(verdict, 0) - start.get(verdict, 0)
