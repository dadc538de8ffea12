"""What an operator sees of the network: the latest of each topic, and why each policy is so.

Pure: built from messages already read (popshift/status.py reads them from Kafka), so the
terminal commands, tests and a console share one reading of the same topics. ``popshift
status`` prints :func:`status_lines`; ``popshift explain POP`` prints :func:`explain_lines`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from popshift.network import NetworkConfig
from schemas.messages import (
    DataplaneStats,
    PolicyAction,
    PolicyEvent,
    PopLoad,
    PopState,
    PopStatus,
    TableUpdate,
)

Observed = PopStatus | PolicyEvent | TableUpdate | PopLoad | DataplaneStats

NOT_USED_SHOWN = 10
"""Peers an explanation names as not used, nearest first (a 300-PoP network has 299)."""
ROOM_MARGIN = 0.02
"""A receiver expected within this of its target has no room left: it is what binds."""


HISTORY = 200
"""Changes kept for the console's timeline."""


@dataclass(frozen=True)
class Change:
    """One line of the timeline: a PoP's status turned, or a policy's shares changed."""

    at: float
    kind: str  # "status" or "policy"
    pop: str
    text: str
    reason: str


def _share_map(p: PolicyEvent) -> dict[tuple[int, str], float]:
    if p.action is PolicyAction.CANCEL:
        return {}
    return {(s.tier, s.destination): round(s.share, 4) for s in p.shares}


@dataclass
class NetworkView:
    """The latest message per key of each topic an operator needs."""

    statuses: dict[str, PopStatus] = field(default_factory=dict)
    policies: dict[str, PolicyEvent] = field(default_factory=dict)
    tables: dict[tuple[str, int], TableUpdate] = field(default_factory=dict)
    loads: dict[str, PopLoad] = field(default_factory=dict)
    """The latest pop-load of each PoP: its servers and when each was last heard."""
    counters: dict[tuple[str, str], DataplaneStats] = field(default_factory=dict)
    """(PoP, node) -> the latest forwarder counters of that node."""
    lag: dict[str, int | None] = field(default_factory=dict)
    """Consumer group -> messages behind (None: it could not be read)."""
    history: deque[Change] = field(default_factory=lambda: deque(maxlen=HISTORY))
    """What changed, oldest first: status turns and policies whose shares changed."""

    def observe(self, messages: Iterable[Observed]) -> NetworkView:
        for m in messages:
            if isinstance(m, PopStatus):
                known_status = self.statuses.get(m.pop)
                if known_status is None or m.at >= known_status.at:
                    self.statuses[m.pop] = m
                    self._status_turned(known_status, m)
            elif isinstance(m, PolicyEvent):
                known = self.policies.get(m.source)
                if known is None or (m.epoch, m.version) >= (known.epoch, known.version):
                    self.policies[m.source] = m
                    self._policy_changed(known, m)
            elif isinstance(m, TableUpdate):
                key = (m.pop, m.tier)
                if key not in self.tables or m.version >= self.tables[key].version:
                    self.tables[key] = m
            elif isinstance(m, PopLoad):
                if m.pop not in self.loads or m.at >= self.loads[m.pop].at:
                    self.loads[m.pop] = m
            elif (m.pop, m.node) not in self.counters or m.at >= self.counters[m.pop, m.node].at:
                self.counters[m.pop, m.node] = m
        return self

    def _status_turned(self, before: PopStatus | None, now: PopStatus) -> None:
        """A first verdict is news only if it is not neutral (300 PoPs coming up are not)."""
        was = before.state if before is not None else PopState.NEUTRAL
        if now.state is not was:
            text = f"{now.pop}: {was.value} -> {now.state.value} at {now.utilisation:.0%}"
            self.history.append(Change(now.at, "status", now.pop, text, now.rule or ""))

    def _policy_changed(self, before: PolicyEvent | None, now: PolicyEvent) -> None:
        """Renewals (same shares, a new version) are not news; a cancel or new shares are."""
        cancel = now.action is PolicyAction.CANCEL
        if _share_map(before) == _share_map(now) if before is not None else cancel:
            return
        what = "cancel: all local" if cancel else shares_text(now)
        text = f"{now.source} v{now.version} {now.action.value}: {what}"
        self.history.append(Change(now.issued_at, "policy", now.source, text, now.reason.rule))

    def in_force(self, source: str, now: float) -> PolicyEvent | None:
        """The source's policy if it forwards anything and its lease has not run out."""
        p = self.policies.get(source)
        if p is None or p.action is PolicyAction.CANCEL or not p.shares:
            return None
        if p.expires_at is not None and p.expires_at < now:
            return None
        return p


def status_word(status: PopStatus | None, now: float, max_age_s: float) -> str:
    """shed / neutral / can_take, or stale (no verdict within ``max_age_s``), or dead (no
    healthy capacity), or unknown (never heard of)."""
    if status is None:
        return "unknown"
    if now - status.at > max_age_s:
        return "stale"
    if status.capacity_cores <= 0.0:
        return "dead"
    return status.state.value


def shares_text(p: PolicyEvent | None) -> str:
    if p is None:
        return "-"
    return ", ".join(f"t{s.tier}->{s.destination} {s.share:.0%}" for s in p.shares)


def status_lines(
    view: NetworkView, network: NetworkConfig, now: float, max_age_s: float
) -> list[str]:
    """One row per PoP (utilisation, status, policy in force, table versions), then the lag of
    each consumer group."""
    rows = [("POP", "UTIL", "STATUS", "SINCE", "CAPACITY", "POLICY IN FORCE", "TABLES")]
    for name in network.pop_names:
        st = view.statuses.get(name)
        tables = sorted((tier, t.version) for (pop, tier), t in view.tables.items() if pop == name)
        rows.append(
            (
                name,
                f"{st.utilisation:.0%}" if st else "-",
                status_word(st, now, max_age_s),
                f"{now - st.since:.0f}s" if st else "-",
                f"{st.capacity_cores:g}" if st else "-",
                shares_text(view.in_force(name, now)),
                " ".join(f"t{tier}:v{v}" for tier, v in tables) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if view.lag:
        out.append("")
        out.append("CONSUMER GROUP LAG")
        for group, lag in sorted(view.lag.items()):
            out.append(f"  {group}: {'unknown' if lag is None else f'{lag} messages'}")
    return out


def _expected(p: PolicyEvent, name: str) -> float | None:
    return p.reason.expected_utilisation.get(name)


def explain_lines(
    view: NetworkView,
    network: NetworkConfig,
    pop: str,
    now: float,
    max_age_s: float,
    overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """Why ``pop``'s policy is what it is: its inputs, the constraint that binds, and each peer
    it does not use with the reason (what an operator asks before overriding it)."""
    cfg = network.pop(pop)
    st = view.statuses.get(pop)
    out = [f"{pop}: target {cfg.target_utilisation:.0%} of its healthy cores"]
    word = status_word(st, now, max_age_s)
    if st is None:
        out.append("  no pop-status seen: the engine cannot decide for it (policies lapse)")
    else:
        out.append(
            f"  analytics: {word} since {now - st.since:.0f}s, utilisation {st.utilisation:.0%} "
            f"({st.load_cores:g} of {st.capacity_cores:g} cores)"
            + (f", excess {st.excess_cores:g} cores" if st.excess_cores else "")
            + (f", headroom {st.headroom_cores:g} cores" if st.headroom_cores else "")
        )
        if st.rule:
            out.append(f"  rule: {st.rule}")
    policy = view.in_force(pop, now)
    incoming = sorted(
        (src, s.share, s.tier)
        for src in view.policies
        if (p := view.in_force(src, now)) is not None
        for s in p.shares
        if s.destination == pop
    )
    for src, share, tier in incoming:
        out.append(f"  receives {share:.0%} of {src}'s tier {tier} (new connections)")
    if policy is None:
        last = view.policies.get(pop)
        out.append(
            "  policy: none in force"
            + (f" (last: v{last.version} {last.action.value}: {last.reason.rule})" if last else "")
        )
        out.extend(f"  override: {o}" for o in (overrides or {}).values())
        return out
    left = max(0.0, (policy.expires_at or now) - now)
    out.append(
        f"  policy v{policy.version} (epoch {policy.epoch}): {shares_text(policy)}; lease "
        f"{left:.0f}s left"
    )
    out.append(f"  engine's reason: {policy.reason.rule}")
    if policy.reason.expected_utilisation:
        expected = ", ".join(
            f"{k} {v:.0%}" for k, v in sorted(policy.reason.expected_utilisation.items())
        )
        out.append(f"  expected after it: {expected}")
    out.append(f"  binds: {_binding(network, pop, policy)}")
    used = {s.destination for s in policy.shares}
    tiers = sorted({s.tier for s in policy.shares})
    unused = sorted(
        (p for p in network.pop_names if p != pop and p not in used),
        key=lambda p: (network.latency(pop, p) is None, network.latency(pop, p) or 0.0),
    )
    for peer in unused[:NOT_USED_SHOWN]:
        out.append(
            f"  not used: {peer}: {_why_not(view, network, pop, peer, tiers, now, max_age_s)}"
        )
    if len(unused) > NOT_USED_SHOWN:
        out.append(f"  not used: {len(unused) - NOT_USED_SHOWN} more, all farther away")
    out.extend(f"  override: {o}" for o in (overrides or {}).values())
    return out


def _binding(network: NetworkConfig, pop: str, policy: PolicyEvent) -> str:
    if policy.reason.rule.startswith("override:"):
        return "an operator's override (`popshift policy show` lists it, `clear` lifts it)"
    if policy.reason.infeasible:
        return (
            "capacity: no receiver within the tiers' latency bounds has room for the whole "
            "excess (the engine reports the policy as least-bad)"
        )
    full = [
        d
        for d in sorted({s.destination for s in policy.shares})
        if (e := _expected(policy, d)) is not None
        and e >= network.pop(d).target_utilisation - ROOM_MARGIN
    ]
    if full:
        return "receivers at their target: " + ", ".join(
            f"{d} expected {_expected(policy, d):.0%} of {network.pop(d).target_utilisation:.0%}"
            for d in full
        )
    return f"{pop}'s own target: it sheds what it has above it, the receivers have room"


def _why_not(
    view: NetworkView,
    network: NetworkConfig,
    src: str,
    peer: str,
    tiers: list[int],
    now: float,
    max_age_s: float,
) -> str:
    latency = network.latency(src, peer)
    rules = [network.tier(t) for t in tiers]
    if latency is None:
        return "no latency figure from here (never a destination)"
    beyond = [r for r in rules if r is not None and latency > r.max_added_latency_ms]
    if rules and len(beyond) == len(rules):
        bound = min(r.max_added_latency_ms for r in beyond)
        return f"{latency:g} ms away, beyond the tier's bound of {bound:g} ms"
    st = view.statuses.get(peer)
    word = status_word(st, now, max_age_s)
    if word in ("stale", "dead", "unknown"):
        return f"{word}: no fresh verdict, never a destination"
    assert st is not None
    if st.state is PopState.SHED:
        return f"sheds itself ({st.utilisation:.0%})"
    target = network.pop(peer).target_utilisation
    if st.utilisation >= target - ROOM_MARGIN:
        return f"no room: {st.utilisation:.0%} of its {target:.0%} target"
    return (
        f"{latency:g} ms away with room ({st.utilisation:.0%}): a nearer or cheaper receiver "
        "took the excess"
    )
