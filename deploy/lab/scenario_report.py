"""What a scenario run produced, and what we conclude from it: pure, so it is unit-tested.

`scenario.py` records a run as a `Result` (samples of load and shares, policy events, every
load-generator record, the data planes' counters) and saves it as JSON; the timeline, the
plot, the end-to-end checks and the benchmark's times all come from that one record, so what
the demo prints is exactly what the test asserts.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services.labapp.results import Kind, Outcome, Record

# The verdicts a node counts (names of services.forwarder.layout.Verdict, lower case).
LOCAL_VERDICTS = ("local", "local_hops_exhausted", "local_self_secondary")


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


def steady_window(
    result: Result, source: str, start: float, end: float, settle_s: float
) -> tuple[float, float, dict[str, float]]:
    """The longest stretch in [start, end) in which `source`'s policy did not change, minus
    `settle_s` after the change (tables applied, connections in flight done): (t0, t1, shares).
    """
    changes = sorted(p.t for p in result.policies if p.source == source and start <= p.t < end)
    bounds = [start, *changes, end]
    best: tuple[float, float, dict[str, float]] = (start, start, {})
    for a, b in itertools.pairwise(bounds):
        a2 = a + settle_s
        if b - a2 > best[1] - best[0]:
            best = (a2, b, policy_in_force(result, source, a + 1e-6))
    return best


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


# -- the checks -------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_long_connections(result: Result) -> Check:
    """Every long-lived connection ended cleanly and stayed on one server."""
    bad = [t for t in longs(result) if t.record.outcome is not Outcome.OK]
    moved = [t for t in longs(result) if t.record.servers_seen > 1]
    count = len(longs(result))
    outcomes = Counter(t.record.outcome.value for t in bad)
    return Check(
        "long-lived connections: none failed, reset or timed out",
        count > 0 and not bad and not moved,
        f"{count} long connections, {len(bad)} failed {dict(outcomes)}, "
        f"{len(moved)} answered by more than one server",
    )


@dataclass(frozen=True)
class Window:
    """A stretch [t0, t1) in which one policy share was in force and applied to the table."""

    t0: float
    t1: float
    share: float  # the policy's share
    table_share: float  # buckets away / 2^N in the edge's table: round(share * 2^N) / 2^N


def min_samples(share: float, tolerance: float, sigmas: float = 3.0) -> int:
    """Connections needed for `tolerance` to be `sigmas` binomial standard deviations: with
    fewer, a correct data plane would miss the tolerance too often for a CI check."""
    p = min(max(share, 0.05), 0.95)
    return int(sigmas * sigmas * p * (1.0 - p) / (tolerance * tolerance)) + 1


def check_share(
    result: Result,
    source: str,
    dest: str,
    windows: Sequence[Window],
    tolerance: float = 0.03,
    label: str = "policy",
    min_n: int | None = None,
) -> Check:
    """The share of `source`'s new connections processed in `dest`, pooled over `windows`, is
    within `tolerance` of the policy's share and of the table's exact share (both weighted by
    the connections of each window). The check needs enough connections for the tolerance to
    be 3 binomial standard deviations (`min_samples`, unless `min_n` says otherwise)."""
    n = hits = 0
    want = table = var = 0.0
    for w in windows:
        ok = [r for r in shorts(result, source, w.t0, w.t1) if r.outcome is Outcome.OK]
        n += len(ok)
        hits += sum(1 for r in ok if r.pop == dest)
        want += w.share * len(ok)
        table += w.table_share * len(ok)
        var += w.table_share * (1.0 - w.table_share) * len(ok)
    got, want, table = (hits / n, want / n, table / n) if n else (0.0, 0.0, 0.0)
    sd = (var**0.5) / n if n else 0.0
    need = min_samples(want, tolerance) if min_n is None else min_n
    spans = ", ".join(f"{w.t0:.0f}..{w.t1:.0f}s" for w in windows) or "none"
    return Check(
        f"share of {source}'s new connections processed in {dest} ({label})",
        n >= need and abs(got - want) <= tolerance and abs(got - table) <= tolerance,
        f"{got:.1%} of {n} (need >= {need}) over t={spans} vs {want:.1%} policy / "
        f"{table:.1%} table in force (+-{tolerance:.0%}; binomial sd {sd:.2%})",
    )


def table_windows(
    result: Result,
    source: str,
    dest: str,
    start: float,
    end: float,
    settle_s: float,
) -> list[Window]:
    """Every stretch in [start, end) in which `source`'s policy sent a share > 0 to `dest` and
    did not change, from `settle_s` after the edge's table showed it (connections in flight
    across a change done) to the next change; with the table's exact share."""
    bits = result.table_bits
    changes = sorted({p.t for p in result.policies if p.source == source and start <= p.t < end})
    windows = []
    for a, b in itertools.pairwise([start, *changes, end]):
        share = policy_in_force(result, source, a + 1e-6).get(dest, 0.0)
        want = round(share * (1 << bits))
        if want == 0:
            continue
        applied = next(
            (
                x.t
                for x in result.tables
                if x.pop == source and a <= x.t < b and len(x.away.get(dest, [])) == want
            ),
            None,
        )
        if applied is not None and applied + settle_s < b:
            windows.append(Window(applied + settle_s, b, share, want / (1 << bits)))
    return windows


def bucket_of(result: Result, region: str, sport: int, dport: int = 80) -> int:
    """The bucket of a TCP connection from region's client to the VIP: the forwarder's own flow
    hash (services.forwarder.model, the same function as the XDP program's)."""
    import ipaddress
    import struct

    from services.forwarder.model import flow_hash

    mapped = bytes(10) + b"\xff\xff"
    src = mapped + ipaddress.IPv4Address(result.addresses[f"client-{region}"]).packed
    dst = mapped + ipaddress.IPv4Address(result.addresses["vip"]).packed
    key = src + dst + struct.pack("!HHB3x", sport, dport, 6)
    return flow_hash(key) & ((1 << result.table_bits) - 1)


def expected_pop(
    result: Result, region: str, start: float, end: float, bucket: int, margin_s: float
) -> str:
    """Where the table sent a new connection of `region` made in [start, end]: the destination
    whose away buckets hold its bucket, else the region's own PoP. "" when the bucket may have
    changed within `margin_s` of that (a change lies between a table record's `since` and its
    `t`): in flight across a change, either side is right; "" too when no table was read
    before and after it."""
    own = [x for x in result.tables if x.pop == region]
    before = [x for x in own if x.t <= start - margin_s]
    if not before or not result.samples or result.samples[-1].t < end + margin_s:
        return ""

    def dest(x: TableRecord) -> str:
        return next((d for d, bs in x.away.items() if bucket in bs), region)

    near = [x for x in own if x.t > start - margin_s and x.since < end + margin_s]
    seen = {dest(x) for x in [before[-1], *near]}
    return seen.pop() if len(seen) == 1 else ""


def check_placement(result: Result, t0: float, t1: float, margin_s: float = 1.0) -> Check:
    """Connection by connection: every new connection that started in [t0, t1) was processed
    by the PoP its bucket (the forwarder's hash of its 5-tuple) pointed to in the landing
    edge's table at that moment (connections within `margin_s` of a change of their bucket are
    in flight and may land on either side)."""
    checked = in_flight = 0
    wrong: Counter[tuple[str, str, str]] = Counter()
    examples: list[str] = []
    for t in result.traffic:
        r = t.record
        if r.kind is not Kind.SHORT or r.outcome is not Outcome.OK or not t0 <= r.start < t1:
            continue
        if not r.sport or f"client-{t.region}" not in result.addresses:
            continue
        b = bucket_of(result, t.region, r.sport)
        want = expected_pop(result, t.region, r.start, r.start + r.duration_s, b, margin_s)
        if not want:
            in_flight += 1
            continue
        checked += 1
        if r.pop != want:
            wrong[(t.region, want, r.pop)] += 1
            if len(examples) < 3:
                examples.append(f"t={r.start:.2f} sport {r.sport} bucket {b} {r.server}")
    regions = sorted({x.pop for x in result.tables})
    where = {f"{r}: {w}->{g}": n for (r, w, g), n in wrong.items()}
    return Check(
        "every new connection processed where its bucket pointed",
        checked > 0 and not wrong,
        f"{checked} connections of regions {','.join(regions)} predicted from the 5-tuple hash "
        f"and the table in force, {sum(wrong.values())} elsewhere "
        f"{where or ''}"
        f"{' e.g. ' + '; '.join(examples) if examples else ''}"
        f"; {in_flight} in flight across a change (not judged)",
    )


def allowed_pops(result: Result) -> dict[str, set[str]]:
    """Who may answer each region: its PoP and the PoPs its own policy ever sent to."""
    out = {p: {p} for p in result.pops}
    for p in result.policies:
        out[p.source] |= set(p.shares)
    return out


def check_one_hop(result: Result) -> Check:
    """No connection was processed further than one inter-PoP hop from where it landed, and the
    data planes agree: nothing ran out of hops, no GUE was refused, and every packet a PoP sent
    to a peer was received there (sent = received, none sent on)."""
    allowed = allowed_pops(result)
    stray = Counter(
        (t.region, t.record.pop)
        for t in result.traffic
        if t.record.outcome is Outcome.OK and t.record.pop not in allowed[t.region]
    )
    nodes = result.counters.get("end", {})
    exhausted = sum(counter_delta(result, n, "local_hops_exhausted") for n in nodes)
    refused = sum(
        counter_delta(result, n, v) for n in nodes for v in ("drop_gue_unknown_src", "drop_gue_bad")
    )
    # second chances to another PoP: SECOND_CHANCE_INTER since the forwarder tells them from
    # intra-PoP ones (count-once fix); before, every SECOND_CHANCE went to another PoP
    split = any("second_chance_inter" in c for c in nodes.values())
    out = ("fwd_inter", "second_chance_inter" if split else "second_chance")
    sent = sum(counter_delta(result, n, v) for n in nodes for v in out)
    # received: by the server that processes it (since the forwarder counts a peer's packet once;
    # before, by the receiving edge); summed over all nodes, right with either
    received = sum(counter_delta(result, n, "received_peer") for n in nodes)
    ok = not stray and exhausted == 0 and refused == 0 and sent > 0 and sent == received
    return Check(
        "at most one inter-PoP hop; received traffic never sent on",
        ok,
        f"answered outside the policy: {dict(stray) or 'none'}; hops exhausted {exhausted}, "
        f"GUE refused {refused}, inter-PoP packets sent {sent} / received {received}",
    )


def check_dsr(result: Result) -> Check:
    """Responses go from the server straight to the client: an edge sees only the client's
    direction (all encapsulated by XDP), never a server's answer (it would pass as not ours)."""
    nodes = [n for n in result.counters.get("end", {}) if "edge" in n]
    encapsulated = sum(counter_delta(result, n, "fwd_intra") for n in nodes)
    passed = sum(counter_delta(result, n, "pass_not_ours") for n in nodes)
    answered = [t for t in result.traffic if t.record.outcome is Outcome.OK]
    return Check(
        "direct server return",
        encapsulated > 0 and passed * 100 < encapsulated and len(answered) > 0,
        f"edges encapsulated {encapsulated} client packets and saw {passed} others "
        f"(a server's answers through an edge would show there)",
    )


def check_after_cancel(result: Result, t0: float, t1: float) -> list[Check]:
    """After the cancel: region a's new connections are processed in a again, and the long
    connections that live in b (opened while a forwarded) keep working through the drain."""
    n, in_a = share_processed(shorts(result, "a", t0, t1), "a")
    late = longs(result, "late")
    in_b = [t for t in late if t.record.pop == "b"]
    cancel = result.marks.get("cancel", t0)
    spanning = [t for t in in_b if t.record.start + t.record.duration_s > cancel]
    bad = [t for t in in_b if t.record.outcome is not Outcome.OK]
    return [
        Check(
            "after the cancel, new connections are processed in a",
            n >= 20 and in_a == 1.0,
            f"{in_a:.1%} of {n} answered by a over t={t0:.0f}..{t1:.0f}s",
        ),
        Check(
            "long connections living in b survive the cancel and drain",
            len(spanning) > 0 and not bad,
            f"{len(in_b)} late long connections live in b, {len(spanning)} across the cancel, "
            f"{len(bad)} failed",
        ),
    ]


def format_checks(checks: Iterable[Check]) -> str:
    return "\n".join(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks)


# -- the timeline -----------------------------------------------------------------------------


@dataclass
class Row:
    t: float
    util: dict[str, float]
    state: dict[str, str]
    shares: str
    new_a: dict[str, int]  # region a's new connections in the step, by answering PoP
    new_ok: int
    new_failed: int
    long_live: dict[str, int]  # long connections open at t, by PoP
    long_failed: int  # long connections failed so far


def _shares_text(shares: Mapping[str, Mapping[str, float]]) -> str:
    parts = [
        f"{src}->{dst} {x:.0%}"
        for src, dests in sorted(shares.items())
        for dst, x in sorted(dests.items())
        if x > 0
    ]
    return ", ".join(parts) or "-"


def timeline(result: Result, step_s: float = 2.0) -> list[Row]:
    """One row per step: loads, shares in force, connections by outcome and by PoP."""
    if not result.samples:
        return []
    rows = []
    end = result.samples[-1].t
    t = step_s * (result.samples[0].t // step_s + 1)  # from the first sample on
    sample_i = 0
    failed_longs = sorted(
        t2.record.start + t2.record.duration_s
        for t2 in longs(result)
        if t2.record.outcome is not Outcome.OK
    )
    while t <= end:
        while sample_i + 1 < len(result.samples) and result.samples[sample_i + 1].t <= t:
            sample_i += 1
        s = result.samples[sample_i]
        window = [
            tr.record
            for tr in result.traffic
            if tr.record.kind is Kind.SHORT and t - step_s <= tr.record.start < t
        ]
        from_a = [
            tr.record
            for tr in result.traffic
            if tr.region == "a"
            and tr.record.kind is Kind.SHORT
            and t - step_s <= tr.record.start < t
            and tr.record.outcome is Outcome.OK
        ]
        live = Counter(
            tr.record.pop
            for tr in longs(result)
            if tr.record.start <= t < tr.record.start + tr.record.duration_s and tr.record.pop
        )
        rows.append(
            Row(
                t=t,
                util=dict(s.util),
                state=dict(s.state),
                shares=_shares_text(s.shares),
                new_a=dict(Counter(r.pop for r in from_a)),
                new_ok=sum(1 for r in window if r.outcome is Outcome.OK),
                new_failed=sum(1 for r in window if r.outcome is not Outcome.OK),
                long_live=dict(live),
                long_failed=sum(1 for x in failed_longs if x <= t),
            )
        )
        t += step_s
    return rows


_MARK_NAMES = {
    "load_on": "load starts",
    "load_off": "load stops",
    "late_longs_on": "long conns opened in region a",
    "cancel": "policies cancelled",
    "late_longs_off": "long conns closed",
    "drained": "drain complete",
    "pin_on": "pin a->b 25%",
    "pin_off": "pin cleared",
}


def format_timeline(result: Result, step_s: float = 2.0) -> str:
    """The timeline as text, with the run's marks where they fall."""
    pops = result.pops
    head = (
        f"{'t(s)':>5} | "
        + " ".join(f"{'load ' + p:>7}" for p in pops)
        + f" | {'shares in force':24} | {'new from a: by PoP':20} | {'new ok/fail':11} | "
        + f"{'long by PoP':16} | lfail"
    )
    lines = [head, "-" * len(head)]
    marks = sorted(result.marks.items(), key=lambda kv: kv[1])
    mi = 0
    for row in timeline(result, step_s):
        while mi < len(marks) and marks[mi][1] <= row.t:
            name, at = marks[mi]
            lines.append(f"{at:5.1f} | --- {_MARK_NAMES.get(name, name)}")
            mi += 1
        loads = " ".join(
            f"{row.util.get(p, 0.0):6.0%}{'!' if row.state.get(p) == 'shed' else ' '}" for p in pops
        )
        by_pop = " ".join(f"{p}:{row.new_a.get(p, 0)}" for p in pops)
        live = " ".join(f"{p}:{row.long_live.get(p, 0)}" for p in pops)
        lines.append(
            f"{row.t:5.0f} | {loads} | {row.shares:24} | {by_pop:20} | "
            f"{row.new_ok:5}/{row.new_failed:<5} | {live:16} | {row.long_failed:5}"
        )
    return "\n".join(lines)


def totals(result: Result) -> dict[str, Any]:
    """Connections by kind, outcome and answering PoP: the summary under the timeline."""
    out: dict[str, Any] = {}
    for kind in Kind:
        recs = [t.record for t in result.traffic if t.record.kind is kind]
        out[kind.value] = {
            "total": len(recs),
            "by_outcome": dict(sorted(Counter(r.outcome.value for r in recs).items())),
            "by_pop": dict(sorted(Counter(r.pop for r in recs if r.pop).items())),
        }
    return out


def plot(result: Result, path: Path, step_s: float = 2.0) -> None:
    """The timeline as a PNG: load, shares (in force and measured), connections per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_share, ax_conn) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ts = [s.t for s in result.samples]
    for p in result.pops:
        ax_load.plot(ts, [s.util.get(p, 0.0) * 100 for s in result.samples], label=f"PoP {p}")
        shed = [s.t for s in result.samples if s.state.get(p) == "shed"]
        if shed:
            ax_load.scatter(shed, [102] * len(shed), marker="|", s=30)
    ax_load.axhline(75, color="grey", ls=":", lw=1)
    ax_load.set_ylabel("utilisation %\n(| = flagged shed)")
    ax_load.legend(loc="upper right", fontsize=8)
    pairs = sorted({(src, dst) for s in result.samples for src, d in s.shares.items() for dst in d})
    for src, dst in pairs:
        ax_share.step(
            ts,
            [s.shares.get(src, {}).get(dst, 0.0) * 100 for s in result.samples],
            where="post",
            label=f"{src}->{dst} in force",
        )
    rows = timeline(result, step_s)
    measured = [
        (r.t - step_s / 2, 100 * r.new_a.get("b", 0) / max(1, sum(r.new_a.values())))
        for r in rows
        if sum(r.new_a.values())
    ]
    if measured:
        ax_share.plot(*zip(*measured, strict=True), ".", label="region a answered by b (measured)")
    ax_share.set_ylabel("share of new conns %")
    ax_share.legend(loc="upper right", fontsize=8)
    for p in result.pops:
        ax_conn.plot(
            [r.t for r in rows],
            [r.new_a.get(p, 0) / step_s for r in rows],
            label=f"region a answered by {p}",
        )
    ax_conn.plot([r.t for r in rows], [r.new_failed / step_s for r in rows], "r--", label="failed")
    ax_conn.plot([r.t for r in rows], [r.long_failed for r in rows], "k:", label="long failed")
    ax_conn.set_ylabel("connections / s")
    ax_conn.set_xlabel("seconds")
    ax_conn.legend(loc="upper right", fontsize=8)
    for ax in (ax_load, ax_share, ax_conn):
        for name, at in result.marks.items():
            if name in _MARK_NAMES:
                ax.axvline(at, color="grey", lw=0.6, ls="--")
    for name, at in result.marks.items():
        if name in _MARK_NAMES:
            ax_load.text(at, 108, _MARK_NAMES[name], rotation=90, fontsize=6, va="bottom")
    fig.suptitle("popshift overload scenario: A overloaded, A->B, cascade B->C, cancel, drain")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
