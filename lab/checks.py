"""The end-to-end checks of an overload run, each a promise popshift makes, judged on its record.

Pure functions of a `lab.record.Result`: the demo prints them, tests/e2e asserts them one by one
(`checks()` names them), and tests/e2e/test_report.py tries each on hand-made runs. SCENARIOS.md
says why the share checks are statistically sound.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lab.app.results import Kind, Outcome
from lab.record import (
    Result,
    TableRecord,
    counter_delta,
    longs,
    policy_in_force,
    share_changes,
    share_processed,
    shorts,
)
from lab.settings import ANALYTICS
from services.analytics.config import load_config
from services.forwarder.model import flow_hash

SETTLE_S = 1.0  # after a table change was seen: SYNs in flight across it (one retransmit) done
TOLERANCE = 0.03  # the promise: the share processed in B within +-3 points
RELIEF_S = 20.0
"""The goal: every PoP below the shed threshold this soon after the load started."""
CALM_HOLD_S = 5.0  # ... and staying there this long (several analytics windows, not one dip)


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
    changes = [p.t for p in share_changes(result, source) if start <= p.t < end]
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
    hash (services.forwarder.model, the same function as the XDP program's; tests/e2e runs
    both on the same 5-tuples)."""
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
    # sent to another PoP: by an edge (FWD_INTER) or a server's second chance (SECOND_CHANCE_INTER;
    # SECOND_CHANCE is within the PoP); received once, by the server that processes it
    out = ("fwd_inter", "second_chance_inter")
    sent = sum(counter_delta(result, n, v) for n in nodes for v in out)
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


def shed_thresholds(result: Result) -> dict[str, float]:
    """Each PoP's combined_over *enter* threshold (lab/analytics.yaml): the load at which
    analytics flags it. Not the exit one: that is the engine's target (0.75), where a relieved
    PoP is meant to sit, so "below exit" would judge the noise around the target, not relief."""
    config = load_config(str(ANALYTICS))
    out = {}
    for pop in result.pops:
        band = config.for_pop(pop).shed.combined_over
        out[pop] = band.enter if band is not None else 1.0
    return out


def overload_gone(
    result: Result, start: float, end: float, hold_s: float = CALM_HOLD_S
) -> float | None:
    """When the overload that began after `start` was gone: the first sample in [start, end)
    after some PoP was seen over its shed threshold from which every PoP's reported
    utilisation stayed at or below it for `hold_s` (or until `end`); None if never."""
    limit = shed_thresholds(result)
    samples = [s for s in result.samples if start <= s.t < end and set(result.pops) <= set(s.util)]
    over = [any(s.util[p] > limit[p] for p in result.pops) for s in samples]
    if True not in over:
        return None
    calm_since: float | None = None
    for s, hot in itertools.islice(zip(samples, over, strict=True), over.index(True), None):
        if hot:
            calm_since = None
            continue
        calm_since = s.t if calm_since is None else calm_since
        if s.t - calm_since >= hold_s:
            return calm_since
    return calm_since if calm_since is not None and end - calm_since >= hold_s else None


def check_relief(result: Result, max_s: float = RELIEF_S) -> Check:
    """The outcome popshift exists for: once the load started, every PoP is below its shed
    threshold within `max_s` (the scenario's capacity allows it: SCENARIOS.md)."""
    on, off = result.marks["load_on"], result.marks["load_off"]
    gone = overload_gone(result, on, off)
    limit = shed_thresholds(result)
    peak = {
        p: max((s.util.get(p, 0.0) for s in result.samples if on <= s.t < off), default=0.0)
        for p in result.pops
    }
    after = f"{gone - on:.1f} s after the load started" if gone is not None else "never"
    return Check(
        f"relief: every PoP below its shed threshold within {max_s:g} s",
        gone is not None and gone - on <= max_s,
        f"overload gone {after} (every PoP <= combined_over enter "
        f"{', '.join(f'{p} {limit[p]:g}' for p in result.pops)} for {CALM_HOLD_S:g} s); "
        f"peak utilisation {', '.join(f'{p} {u:.0%}' for p, u in peak.items())}",
    )


def check_infeasible_reported(result: Result) -> Check:
    """Where the receivers cannot take the excess within the latency bounds, the engine says
    so: a policy whose reason is least-bad (infeasible), with the rule naming why."""
    start = result.marks["infeasible_on"]
    end = result.marks.get("infeasible_off", float("inf"))
    said = [
        p
        for p in result.policies
        if start <= p.t < end and p.infeasible and p.rule.startswith("partial: receivers full")
    ]
    first = said[0] if said else None
    return Check(
        "beyond capacity: the policy is reported least-bad (infeasible) with its reason",
        first is not None,
        f"{len(said)} infeasible policy events from {start:.0f}s"
        + (f", first at {first.t:.1f}s: {first.source}: {first.rule}" if first else ""),
    )


def format_checks(checks: Iterable[Check]) -> str:
    return "\n".join(f"[{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks)


def engine_windows(result: Result, end: float) -> list[Window]:
    """Where the engine's share of a->b held still (table applied, settled) up to `end`."""
    return table_windows(result, "a", "b", result.marks["load_on"], end, SETTLE_S)


def pin_windows(result: Result, end: float) -> list[Window]:
    """Where the pinned share of a->b was in a's table, settled, up to `end`."""
    return table_windows(result, "a", "b", result.marks["drained"], end, SETTLE_S)


def checks(result: Result) -> dict[str, Check]:
    """The end-to-end checks of one overload run by name (tests/e2e asserts the same ones)."""
    m = result.marks
    out = {"long_connections": check_long_connections(result)}
    engine = engine_windows(result, m["load_off"])
    out["engine_share"] = check_share(result, "a", "b", engine, TOLERANCE, label="engine")
    if "pin_off" in m:
        pinned = pin_windows(result, m["pin_off"])
        out["pinned_share"] = check_share(result, "a", "b", pinned, TOLERANCE, label="pinned")
    out["placement"] = check_placement(result, m["load_on"] - 5.0, m["end"])
    out["dsr"] = check_dsr(result)
    out["one_hop"] = check_one_hop(result)
    # after the cancel: from when a's table is local again (and in-flight connections done)
    t0 = max(m["cancel"] + 2.0, m.get("a_local", 0.0) + 1.0)
    local, survive = check_after_cancel(result, t0, m["drained"])
    out["after_cancel_local"], out["after_cancel_longs"] = local, survive
    out["relief"] = check_relief(result)
    if "infeasible_on" in m:
        out["infeasible"] = check_infeasible_reported(result)
    return out
