"""services/analytics/batch.py gives, for every PoP at once, what rules.step gives for each."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.messages import PopState, PopStatus
from services.analytics.batch import Uniform, step_many
from services.analytics.config import Band, CanTakeRules, CountBand, PopRules, ShedRules
from services.analytics.rules import Hysteresis, step
from tests.sim.test_speed_rules import RULES as SPEED_RULES

POPS = 60
RULES = [
    *SPEED_RULES,
    PopRules(  # the simulator's: probes' latency too
        shed=PopRules().shed.model_copy(update={"qos_p95_over_ms": Band(enter=250.0, exit=150.0)}),
    ),
    PopRules(
        shed=ShedRules(servers_over=CountBand(enter=0.8, exit=0.7, min_count=4)),
        can_take=CanTakeRules(
            servers_under=CountBand(enter=0.5, exit=0.6, min_count=2, min_fraction=0.9),
            qos_p95_under_ms=Band(enter=100.0, exit=150.0),
        ),
        min_dwell_s=4.0,
        refresh_s=3.0,
    ),
    PopRules(can_take=CanTakeRules()),  # no can-take rule at all
]


def _window(rng: np.random.Generator, level: np.ndarray) -> Uniform:
    servers = rng.choice([0, 1, 2, 3, 5, 40], POPS)
    capacity = servers * 64.0
    capacity[rng.random(POPS) < 0.05] = 0.0  # every server down (or the PoP dark)
    load = level * capacity
    load[(capacity == 0.0) & (rng.random(POPS) < 0.5)] = 3.0  # load without capacity
    qos = rng.uniform(50.0, 300.0, POPS)
    qos[rng.random(POPS) < 0.2] = np.nan
    return Uniform(
        pops=[f"p{i}" for i in range(POPS)],
        capacity=capacity,
        load=load,
        servers=servers,
        qos_p95_ms=qos if rng.random() < 0.9 else None,
    )


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("seed", range(3))
def test_step_many_equals_rules_step_per_pop(rules: PopRules, seed: int) -> None:
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.0, 1.2, POPS)
    many = None
    each: list[Hysteresis | None] = [None] * POPS
    now = 0.0
    seen = set()
    for _ in range(400):
        # loads wander (so that states last and dwell), sometimes jump
        level = np.clip(level + rng.normal(0.0, 0.08, POPS), 0.0, 1.3)
        jump = rng.random(POPS) < 0.05
        level[jump] = rng.uniform(0.0, 1.2, int(jump.sum()))
        window = _window(rng, level)
        many, got = step_many(many, window, now, rules)
        want: list[PopStatus] = []
        for i in range(POPS):
            each[i], status = step(each[i], window.metrics(i), now, rules)
            if status is not None:
                want.append(status)
        assert [PopStatus(**row._asdict()) for row in got] == want  # valid messages, the same
        assert [many.of(i) for i in range(POPS)] == each
        seen |= {h.state for h in each if h is not None}
        now += float(rng.choice([1.0, 2.5, 5.0]))
    assert seen == set(PopState) or rules.can_take == CanTakeRules()
