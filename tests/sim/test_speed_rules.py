"""services/analytics/rules.py, made faster for the simulator, gives the answers it gave before.

The reference below is the straightforward version (a list of every server's utilisation, looped
over per rule, ``dataclasses.replace`` for the hysteresis) the fast one replaced; both must give
the same reasons, statuses and hysteresis on fleets of identical servers (one run), mixed fleets
and everything between.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from schemas.messages import PopState, PopStatus
from services.analytics.config import Band, CanTakeRules, CountBand, PopRules, ShedRules
from services.analytics.rules import (
    NO_CAPACITY,
    Hysteresis,
    Metrics,
    ServerMetric,
    can_take_reasons,
    pop_status,
    quorum,
    shed_reasons,
    step,
)

ALL_SHED = ShedRules(
    any_server_over=Band(enter=0.9, exit=0.8),
    servers_over=CountBand(enter=0.8, exit=0.7, min_count=3, min_fraction=0.5),
    combined_over=Band(enter=0.85, exit=0.75),
    qos_p95_over_ms=Band(enter=200.0, exit=100.0),
)
ALL_TAKE = CanTakeRules(
    any_server_under=Band(enter=0.3, exit=0.4),
    servers_under=CountBand(enter=0.5, exit=0.6, min_fraction=0.75),
    combined_under=Band(enter=0.6, exit=0.7),
)
RULES = [PopRules(), PopRules(shed=ALL_SHED, can_take=ALL_TAKE, min_dwell_s=10.0, refresh_s=7.0)]


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def ref_shed(m: Metrics, rules: ShedRules, entering: bool) -> list[str]:
    if m.capacity_cores <= 0.0:
        return [NO_CAPACITY]
    utils = [s.utilisation for s in m.servers]
    fired = []
    if b := rules.any_server_over:
        t = b.enter if entering else b.exit
        if any(u > t for u in utils):
            fired.append(f"any_server_over: max {_fmt(max(utils))} > {t:g}")
    if c := rules.servers_over:
        t = c.enter if entering else c.exit
        n = sum(1 for u in utils if u > t)
        if quorum(n, len(utils), c.min_count, c.min_fraction):
            fired.append(f"servers_over: {n}/{len(utils)} > {t:g}")
    if b := rules.combined_over:
        t = b.enter if entering else b.exit
        if m.utilisation > t:
            fired.append(f"combined_over: {_fmt(m.utilisation)} > {t:g}")
    if b := rules.qos_p95_over_ms:
        t = b.enter if entering else b.exit
        if m.qos_p95_ms is not None and m.qos_p95_ms > t:
            fired.append(f"qos_p95_over_ms: {_fmt(m.qos_p95_ms)} > {t:g}")
    return fired


def ref_take(m: Metrics, rules: CanTakeRules, entering: bool) -> list[str]:
    if rules.empty or m.capacity_cores <= 0.0:
        return []
    utils = [s.utilisation for s in m.servers]
    held = []
    if b := rules.any_server_under:
        t = b.enter if entering else b.exit
        if not any(u < t for u in utils):
            return []
        held.append(f"any_server_under: min {_fmt(min(utils))} < {t:g}")
    if c := rules.servers_under:
        t = c.enter if entering else c.exit
        n = sum(1 for u in utils if u < t)
        if not quorum(n, len(utils), c.min_count, c.min_fraction):
            return []
        held.append(f"servers_under: {n}/{len(utils)} < {t:g}")
    if b := rules.combined_under:
        if not m.utilisation < (t := b.enter if entering else b.exit):
            return []
        held.append(f"combined_under: {_fmt(m.utilisation)} < {t:g}")
    return held


def ref_step(
    h: Hysteresis | None, m: Metrics, now: float, rules: PopRules
) -> tuple[Hysteresis, PopStatus | None]:
    h = h or Hysteresis.initial(now)
    dwell_over = now >= h.dwell_until
    if h.state is PopState.SHED:
        keep = ref_shed(m, rules.shed, False)
        if keep or not dwell_over:
            state, reasons = PopState.SHED, keep
        else:
            take = ref_take(m, rules.can_take, True)
            state, reasons = (PopState.CAN_TAKE, take) if take else (PopState.NEUTRAL, [])
    elif shed := ref_shed(m, rules.shed, True):
        state, reasons = PopState.SHED, shed
    elif h.state is PopState.CAN_TAKE:
        keep = ref_take(m, rules.can_take, False)
        state, reasons = (
            (PopState.CAN_TAKE, keep) if keep or not dwell_over else (PopState.NEUTRAL, [])
        )
    else:
        take = ref_take(m, rules.can_take, True)
        state, reasons = (
            (PopState.CAN_TAKE, take) if take and dwell_over else (PopState.NEUTRAL, [])
        )
    if state is not h.state:
        h = Hysteresis(state, since=now, dwell_until=now + rules.min_dwell_s)
    rule = "; ".join(reasons) if reasons else (h.rule if state is not PopState.NEUTRAL else None)
    h = replace(h, rule=rule)
    if h.last_emit is not None and now - h.last_emit < rules.refresh_s:
        return h, None
    h = replace(h, last_emit=now)
    return h, pop_status(m, h, now, rules)  # building the message was not part of the speed work


def _metrics(rng: random.Random) -> Metrics:
    n = rng.choice([0, 1, 2, 5, 40])
    level = rng.uniform(0.0, 1.2)
    kind = rng.choice(["one object", "equal values", "mixed", "mostly equal"])
    if kind == "one object":
        servers = (ServerMetric(level, 64.0),) * n
    elif kind == "equal values":
        servers = tuple(ServerMetric(level, 64.0) for _ in range(n))
    elif kind == "mixed":
        servers = tuple(ServerMetric(rng.uniform(0.0, 1.2), 64.0) for _ in range(n))
    else:
        servers = tuple(ServerMetric(level if k else rng.uniform(0.0, 1.2), 64.0) for k in range(n))
    cap = 64.0 * n if rng.random() > 0.05 else 0.0
    load = sum(s.utilisation * s.capacity_cores for s in servers) * rng.uniform(0.9, 1.1)
    qos = rng.choice([None, rng.uniform(50.0, 250.0)])
    return Metrics(pop="p", capacity_cores=cap, load_cores=load, servers=servers, qos_p95_ms=qos)


@pytest.mark.parametrize("seed", range(4))
def test_reasons_equal_the_straightforward_rules(seed: int) -> None:
    rng = random.Random(seed)
    fired = 0
    for _ in range(2000):
        m = _metrics(rng)
        for rules in RULES:
            for entering in (True, False):
                shed = shed_reasons(m, rules.shed, entering)
                assert shed == ref_shed(m, rules.shed, entering)
                assert can_take_reasons(m, rules.can_take, entering) == ref_take(
                    m, rules.can_take, entering
                )
                fired += any(r.startswith("servers_over") for r in shed)
    assert fired, "the random fleets should reach the count rule"


@pytest.mark.parametrize("rules", RULES)
def test_a_sequence_of_steps_equals_the_straightforward_hysteresis(rules: PopRules) -> None:
    rng = random.Random(7)
    fast: Hysteresis | None = None
    ref: Hysteresis | None = None
    states = set()
    for k in range(3000):
        m = _metrics(rng)
        now = k * rng.choice([1.0, 2.5, 5.0])
        fast, got = step(fast, m, now, rules)
        ref, want = ref_step(ref, m, now, rules)
        assert fast == ref
        assert got == want
        states.add(fast.state)
    assert states == set(PopState)
