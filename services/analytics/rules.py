"""The identification rules and the hysteresis that keeps a PoP's status from flapping.

Pure functions of a window's metrics and the clock; no Kafka, no faust. The faust app and the
tests call exactly this code. Patent (43)-(44), (82)-(83): a PoP sheds when any server, N (or p %)
of its servers, or its combined load is over a threshold, or its service latency is over the SLO;
the mirror rules say a PoP can take traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from schemas.messages import PopState, PopStatus
from services.analytics.config import Band, CanTakeRules, CountBand, PopRules, ShedRules

NO_CAPACITY = "no_healthy_capacity"


class ServerMetric(NamedTuple):
    """One healthy server over the window (a tuple: a PoP builds a hundred per pop-load)."""

    utilisation: float
    capacity_cores: float


class Fleet(NamedTuple):
    """A PoP's healthy servers' utilisations as runs of (utilisation, servers with it).

    Why: the rules run for every PoP every round, and a PoP of identical servers (one
    ``ServerMetric`` repeated, as the simulator builds them, or equal averages) is one run, so a
    verdict costs O(1) instead of a Python loop over hundreds of servers. Runs keep the servers'
    order, so ``max``/``min`` name the same (first) server a plain list would.
    """

    runs: tuple[tuple[float, int], ...]
    size: int

    @classmethod
    def of(cls, servers: tuple[ServerMetric, ...]) -> Fleet:
        n = len(servers)
        if n and servers.count(servers[0]) == n:
            return cls(((servers[0].utilisation, n),), n)
        return cls(tuple((s.utilisation, 1) for s in servers), n)

    def count_over(self, threshold: float) -> int:
        return sum(k for u, k in self.runs if u > threshold)

    def count_under(self, threshold: float) -> int:
        return sum(k for u, k in self.runs if u < threshold)

    def max(self) -> float:
        return max(u for u, _ in self.runs)

    def min(self) -> float:
        return min(u for u, _ in self.runs)


@dataclass(frozen=True)
class Metrics:
    """One PoP over its window: what the rules look at."""

    pop: str
    capacity_cores: float  # healthy capacity now: a server that went down has left it
    load_cores: float  # combined load, averaged over the window
    servers: tuple[ServerMetric, ...]  # healthy servers, utilisation averaged over the window
    qos_p95_ms: float | None = None
    fleet: Fleet = field(init=False, repr=False, compare=False)
    """The servers as the rules read them, built once (functools.cached_property takes a lock
    on every first read: slower than building it here, and the default rules always read it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fleet", Fleet.of(self.servers))

    @property
    def utilisation(self) -> float:
        if self.capacity_cores <= 0.0:
            return 1.0 if self.load_cores > 0.0 else 0.0
        return self.load_cores / self.capacity_cores

    @property
    def server_utilisation(self) -> list[float]:
        return [s.utilisation for s in self.servers]


def quorum(count: int, total: int, min_count: int | None, min_fraction: float | None) -> bool:
    """At least ``min_count`` servers, or at least ``min_fraction`` of them (either suffices)."""
    if total == 0 or count == 0:
        return False
    by_count = min_count is not None and count >= min_count
    by_fraction = min_fraction is not None and count / total >= min_fraction - 1e-12
    return by_count or by_fraction


def any_server_over(fleet: Fleet, threshold: float) -> bool:
    return fleet.count_over(threshold) > 0


def servers_over(fleet: Fleet, threshold: float, band: CountBand) -> bool:
    return quorum(fleet.count_over(threshold), fleet.size, band.min_count, band.min_fraction)


def combined_over(utilisation: float, threshold: float) -> bool:
    return utilisation > threshold


def qos_over(p95_ms: float | None, slo_ms: float) -> bool:
    return p95_ms is not None and p95_ms > slo_ms


def any_server_under(fleet: Fleet, threshold: float) -> bool:
    return fleet.count_under(threshold) > 0


def servers_under(fleet: Fleet, threshold: float, band: CountBand) -> bool:
    return quorum(fleet.count_under(threshold), fleet.size, band.min_count, band.min_fraction)


def combined_under(utilisation: float, threshold: float) -> bool:
    return utilisation < threshold


def qos_under(p95_ms: float | None, slo_ms: float) -> bool:
    """No measurement proves nothing: a PoP without QoS data does not pass a QoS rule."""
    return p95_ms is not None and p95_ms < slo_ms


def _threshold(band: Band, entering: bool) -> float:
    return band.enter if entering else band.exit


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def shed_reasons(m: Metrics, rules: ShedRules, entering: bool) -> list[str]:
    """The shed rules that fire, at their enter (or, once shedding, exit) thresholds."""
    if m.capacity_cores <= 0.0:
        return [NO_CAPACITY]
    fleet = m.fleet
    fired: list[str] = []
    if (b := rules.any_server_over) and any_server_over(fleet, t := _threshold(b, entering)):
        fired.append(f"any_server_over: max {_fmt(fleet.max())} > {t:g}")
    if (c := rules.servers_over) and servers_over(fleet, t := _threshold(c, entering), c):
        fired.append(f"servers_over: {fleet.count_over(t)}/{fleet.size} > {t:g}")
    if (b := rules.combined_over) and combined_over(m.utilisation, t := _threshold(b, entering)):
        fired.append(f"combined_over: {_fmt(m.utilisation)} > {t:g}")
    if (b := rules.qos_p95_over_ms) and qos_over(m.qos_p95_ms, t := _threshold(b, entering)):
        fired.append(f"qos_p95_over_ms: {_fmt(m.qos_p95_ms)} > {t:g}")
    return fired


def can_take_reasons(m: Metrics, rules: CanTakeRules, entering: bool) -> list[str]:
    """The can-take rules, if every configured one holds; otherwise (or none configured) []."""
    if m.capacity_cores <= 0.0:  # (no rule configured also gives [], without a loop over them)
        return []
    held: list[str] = []
    if b := rules.any_server_under:
        if not any_server_under(m.fleet, t := _threshold(b, entering)):
            return []
        held.append(f"any_server_under: min {_fmt(m.fleet.min())} < {t:g}")
    if c := rules.servers_under:
        if not servers_under(m.fleet, t := _threshold(c, entering), c):
            return []
        held.append(f"servers_under: {m.fleet.count_under(t)}/{m.fleet.size} < {t:g}")
    if b := rules.combined_under:
        if not combined_under(m.utilisation, t := _threshold(b, entering)):
            return []
        held.append(f"combined_under: {_fmt(m.utilisation)} < {t:g}")
    if b := rules.qos_p95_under_ms:
        if not qos_under(m.qos_p95_ms, t := _threshold(b, entering)):
            return []
        held.append(f"qos_p95_under_ms: {_fmt(m.qos_p95_ms)} < {t:g}")
    return held


def excess_cores(m: Metrics, target: float) -> float:
    """Cores to move away: the PoP's load over target or, when only servers are hot, theirs."""
    combined = m.load_cores - target * m.capacity_cores
    if combined > 0.0:
        return combined
    return sum(max(0.0, (s.utilisation - target) * s.capacity_cores) for s in m.servers)


def headroom_cores(m: Metrics, target: float) -> float:
    return max(0.0, target * m.capacity_cores - m.load_cores)


@dataclass(frozen=True)
class Hysteresis:
    """One PoP's status between steps. ``dwell_until``: no leaving before then (entering shed
    excepted, since relief for an overloaded PoP must come within seconds)."""

    state: PopState
    since: float
    dwell_until: float
    rule: str | None = None
    last_emit: float | None = None

    @classmethod
    def initial(cls, now: float) -> Hysteresis:
        return cls(state=PopState.NEUTRAL, since=now, dwell_until=now)


def _decide(h: Hysteresis, m: Metrics, now: float, rules: PopRules) -> tuple[PopState, list[str]]:
    dwell_over = now >= h.dwell_until
    if h.state is PopState.SHED:
        keep = shed_reasons(m, rules.shed, entering=False)
        if keep or not dwell_over:
            return PopState.SHED, keep
        take = can_take_reasons(m, rules.can_take, entering=True)
        return (PopState.CAN_TAKE, take) if take else (PopState.NEUTRAL, [])
    shed = shed_reasons(m, rules.shed, entering=True)
    if shed:
        return PopState.SHED, shed
    if h.state is PopState.CAN_TAKE:
        keep = can_take_reasons(m, rules.can_take, entering=False)
        return (PopState.CAN_TAKE, keep) if keep or not dwell_over else (PopState.NEUTRAL, [])
    take = can_take_reasons(m, rules.can_take, entering=True)
    if take and dwell_over:
        return PopState.CAN_TAKE, take
    return PopState.NEUTRAL, []


def step(
    h: Hysteresis | None, m: Metrics, now: float, rules: PopRules
) -> tuple[Hysteresis, PopStatus | None]:
    """Advance one PoP's status; a PopStatus is returned on a change and every ``refresh_s``."""
    h = h or Hysteresis.initial(now)
    state, reasons = _decide(h, m, now, rules)
    if state is h.state:
        since, dwell_until, kept, last_emit = h.since, h.dwell_until, h.rule, h.last_emit
    else:  # a new state starts its dwell, with no rule or emission carried over
        since, dwell_until, kept, last_emit = now, now + rules.min_dwell_s, None, None
    rule = "; ".join(reasons) if reasons else (kept if state is not PopState.NEUTRAL else None)
    if last_emit is not None and now - last_emit < rules.refresh_s:
        return Hysteresis(state, since, dwell_until, rule, last_emit), None
    h = Hysteresis(state, since, dwell_until, rule, now)
    return h, pop_status(m, h, now, rules)


def pop_status(m: Metrics, h: Hysteresis, now: float, rules: PopRules) -> PopStatus:
    """The message for one PoP's verdict ``h`` on the window ``m``."""
    target = rules.target_utilisation
    return PopStatus(
        pop=m.pop,
        at=now,
        state=h.state,
        since=h.since,
        utilisation=min(m.utilisation, 100.0),
        capacity_cores=m.capacity_cores,
        load_cores=m.load_cores,
        excess_cores=excess_cores(m, target) if h.state is PopState.SHED else 0.0,
        headroom_cores=headroom_cores(m, target) if h.state is PopState.CAN_TAKE else 0.0,
        rule=h.rule[:512] if h.rule else None,
    )
