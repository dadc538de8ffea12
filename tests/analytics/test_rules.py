"""The identification rules, the window and the hysteresis as pure functions: no Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.messages import PopLoad, PopState, ServerLoad
from services.analytics.config import (
    AnalyticsConfig,
    Band,
    CanTakeRules,
    CountBand,
    PopRules,
    ShedRules,
    load_config,
)
from services.analytics.rules import (
    NO_CAPACITY,
    Hysteresis,
    Metrics,
    ServerMetric,
    can_take_reasons,
    excess_cores,
    headroom_cores,
    quorum,
    shed_reasons,
    step,
)
from services.analytics.window import Analyzer, PopWindow
from tests.conftest import REPO


def metrics(*utils: float, capacity: float = 4.0, qos: float | None = None) -> Metrics:
    servers = tuple(ServerMetric(u, capacity) for u in utils)
    return Metrics(
        pop="a",
        capacity_cores=capacity * len(utils),
        load_cores=sum(u * capacity for u in utils),
        servers=servers,
        qos_p95_ms=qos,
    )


ONLY = {
    "any": ShedRules(any_server_over=Band(enter=0.9, exit=0.8)),
    "count": ShedRules(servers_over=CountBand(enter=0.8, exit=0.7, min_count=2)),
    "fraction": ShedRules(servers_over=CountBand(enter=0.8, exit=0.7, min_fraction=0.5)),
    "combined": ShedRules(combined_over=Band(enter=0.85, exit=0.75)),
    "qos": ShedRules(qos_p95_over_ms=Band(enter=200, exit=100)),
}


@pytest.mark.parametrize(
    ("rule", "m", "fires"),
    [
        ("any", metrics(0.1, 0.1, 0.95), True),
        ("any", metrics(0.89, 0.89, 0.89), False),
        ("count", metrics(0.85, 0.85, 0.1, 0.1, 0.1), True),
        ("count", metrics(0.85, 0.1, 0.1), False),
        ("fraction", metrics(0.85, 0.85, 0.1, 0.1), True),  # 50 %
        ("fraction", metrics(0.85, 0.1, 0.1), False),  # 33 %
        ("combined", metrics(0.9, 0.9, 0.8), True),
        ("combined", metrics(0.99, 0.5, 0.5), False),  # one hot server, PoP fine
        ("qos", metrics(0.1, qos=250.0), True),
        ("qos", metrics(0.1, qos=150.0), False),
        ("qos", metrics(0.1, qos=None), False),
    ],
)
def test_each_shed_rule_fires_only_over_its_enter_threshold(
    rule: str, m: Metrics, fires: bool
) -> None:
    reasons = shed_reasons(m, ONLY[rule], entering=True)
    assert bool(reasons) is fires
    if fires:
        assert len(reasons) == 1
        assert reasons[0].split(":")[0] in ONLY[rule].model_dump(exclude_none=True)


@pytest.mark.parametrize("rule", ["any", "count", "combined", "qos"])
def test_a_shed_rule_stays_fired_between_exit_and_enter(rule: str) -> None:
    m = {
        "any": metrics(0.1, 0.85),
        "count": metrics(0.75, 0.75, 0.1),
        "combined": metrics(0.8, 0.8),
        "qos": metrics(0.1, qos=150.0),
    }[rule]
    assert shed_reasons(m, ONLY[rule], entering=True) == []
    assert shed_reasons(m, ONLY[rule], entering=False) != []


def test_quorum_is_count_or_fraction() -> None:
    assert quorum(2, 100, min_count=2, min_fraction=0.5)
    assert quorum(50, 100, min_count=None, min_fraction=0.5)
    assert not quorum(1, 100, min_count=2, min_fraction=0.5)
    assert not quorum(0, 0, min_count=1, min_fraction=None)


def test_any_configured_shed_rule_suffices_and_all_firing_are_named() -> None:
    rules = ShedRules(
        any_server_over=Band(enter=0.9, exit=0.8), combined_over=Band(enter=0.85, exit=0.75)
    )
    assert [r.split(":")[0] for r in shed_reasons(metrics(0.95, 0.1), rules, True)] == [
        "any_server_over"
    ]
    both = shed_reasons(metrics(0.95, 0.95), rules, True)
    assert [r.split(":")[0] for r in both] == ["any_server_over", "combined_over"]


def test_a_pop_without_healthy_capacity_sheds() -> None:
    m = Metrics(pop="a", capacity_cores=0.0, load_cores=0.0, servers=())
    assert shed_reasons(m, ShedRules(), entering=True) == [NO_CAPACITY]
    assert can_take_reasons(m, CanTakeRules(combined_under=Band(enter=0.5, exit=0.6)), True) == []


@pytest.mark.parametrize(
    ("rules", "m", "holds"),
    [
        (CanTakeRules(any_server_under=Band(enter=0.3, exit=0.4)), metrics(0.9, 0.2), True),
        (CanTakeRules(any_server_under=Band(enter=0.3, exit=0.4)), metrics(0.9, 0.35), False),
        (
            CanTakeRules(servers_under=CountBand(enter=0.5, exit=0.6, min_fraction=0.75)),
            metrics(0.4, 0.4, 0.4, 0.9),
            True,
        ),
        (
            CanTakeRules(servers_under=CountBand(enter=0.5, exit=0.6, min_count=3)),
            metrics(0.4, 0.4, 0.9, 0.9),
            False,
        ),
        (CanTakeRules(combined_under=Band(enter=0.6, exit=0.7)), metrics(0.95, 0.1), True),
        (CanTakeRules(combined_under=Band(enter=0.6, exit=0.7)), metrics(0.65, 0.65), False),
        (CanTakeRules(qos_p95_under_ms=Band(enter=50, exit=80)), metrics(0.1, qos=20.0), True),
        (CanTakeRules(qos_p95_under_ms=Band(enter=50, exit=80)), metrics(0.1, qos=None), False),
        # every configured rule must hold: low combined load but slow service
        (
            CanTakeRules(
                combined_under=Band(enter=0.6, exit=0.7), qos_p95_under_ms=Band(enter=50, exit=80)
            ),
            metrics(0.1, qos=60.0),
            False,
        ),
        (CanTakeRules(), metrics(0.0), False),
    ],
)
def test_can_take_rules_mirror_the_shed_rules(rules: CanTakeRules, m: Metrics, holds: bool) -> None:
    assert bool(can_take_reasons(m, rules, entering=True)) is holds


def test_excess_and_headroom_are_measured_against_the_target() -> None:
    assert excess_cores(metrics(0.9, 0.9), target=0.75) == pytest.approx(1.2)
    # only one server hot: its own excess, not the PoP's (which is negative)
    assert excess_cores(metrics(1.0, 0.1), target=0.75) == pytest.approx(1.0)
    assert headroom_cores(metrics(0.5, 0.5), target=0.75) == pytest.approx(2.0)
    assert headroom_cores(metrics(0.9, 0.9), target=0.75) == 0.0


RULES = PopRules(
    window_s=1.0,
    min_dwell_s=10.0,
    refresh_s=5.0,
    target_utilisation=0.75,
    shed=ShedRules(combined_over=Band(enter=0.85, exit=0.75)),
    can_take=CanTakeRules(combined_under=Band(enter=0.6, exit=0.7)),
)


def run(utils: list[float], rules: PopRules = RULES, dt: float = 1.0) -> list[PopState]:
    h: Hysteresis | None = None
    states = []
    for i, u in enumerate(utils):
        h, _ = step(h, metrics(u, u), i * dt, rules)
        states.append(h.state)
    return states


def test_shed_is_entered_at_once_and_left_only_below_exit_after_the_dwell() -> None:
    N, S = PopState.NEUTRAL, PopState.SHED
    # 0.8 is inside the band: stays shed; 0.7 is below exit but the dwell (10 s) is not over.
    assert run([0.8, 0.9, 0.8, 0.7, 0.7]) == [N, S, S, S, S]
    assert run([0.9] + [0.7] * 11) == [S] * 10 + [N, N]


def test_can_take_needs_its_enter_threshold_and_shed_preempts_the_dwell() -> None:
    N, S, C = PopState.NEUTRAL, PopState.SHED, PopState.CAN_TAKE
    assert run([0.65, 0.55, 0.65, 0.9]) == [N, C, C, S]


def test_leaving_shed_goes_straight_to_can_take_when_the_load_fell_that_far() -> None:
    assert run([0.9] + [0.5] * 10)[-1] is PopState.CAN_TAKE


def test_status_is_emitted_on_change_and_refreshed_while_unchanged() -> None:
    h: Hysteresis | None = None
    emitted = []
    for t in range(12):
        h, status = step(h, metrics(0.9 if t >= 3 else 0.65, 0.9), float(t), RULES)
        if status is not None:
            emitted.append((t, status.state, status.since))
    assert emitted == [
        (0, PopState.NEUTRAL, 0.0),
        (3, PopState.SHED, 3.0),
        (8, PopState.SHED, 3.0),
    ]


def test_status_carries_the_rule_and_the_excess() -> None:
    _, status = step(None, metrics(0.9, 0.9), 1.0, RULES)
    assert status is not None
    assert status.state is PopState.SHED
    assert status.rule == "combined_over: 0.900 > 0.85"
    assert status.excess_cores == pytest.approx(1.2)
    assert status.headroom_cores == 0.0
    assert status.capacity_cores == 8.0


# Inside each state's band; the shed band is open at its exit (a load *at* exit leaves), kept a
# hair above it so that averaging in the window cannot round onto the edge.
BANDS = {
    PopState.SHED: (0.9, st.floats(min_value=0.75 + 1e-9, max_value=0.85)),
    PopState.NEUTRAL: (0.65, st.floats(min_value=0.6, max_value=0.85)),
    PopState.CAN_TAKE: (0.5, st.floats(min_value=0.6, max_value=0.699)),
}


@settings(max_examples=200, deadline=None)
@given(
    start=st.sampled_from(list(BANDS)),
    data=st.data(),
    steps=st.lists(st.floats(min_value=0.01, max_value=30.0), min_size=1, max_size=60),
)
def test_a_load_oscillating_inside_the_band_never_changes_the_status(
    start: PopState, data: st.DataObject, steps: list[float]
) -> None:
    """Through the whole analyzer (window, rules, hysteresis), with any time steps."""
    entry, band = BANDS[start]
    analyzer = Analyzer(AnalyticsConfig(defaults=RULES))
    at = 1000.0
    analyzer.observe(pop_load(at - RULES.window_s, [entry] * 4))  # a whole window of it
    analyzer.observe(pop_load(at, [entry] * 4))
    assert analyzer.state("a").state is start  # type: ignore[union-attr]
    for dt in steps:
        at += dt
        status = analyzer.observe(pop_load(at, [data.draw(band)] * 4))
        assert analyzer.state("a").state is start  # type: ignore[union-attr]
        assert status is None or status.state is start


def pop_load(at: float, utils: list[float], down: int = 0, qos: float | None = None) -> PopLoad:
    servers = [
        ServerLoad(
            server=f"a{i}",
            address=f"10.0.0.{i + 1}",
            capacity_cores=4.0,
            utilisation=u,
            healthy=i >= down,
        )
        for i, u in enumerate(utils)
    ]
    healthy = [s for s in servers if s.healthy]
    return PopLoad(
        pop="a",
        at=at,
        servers=servers,
        healthy_capacity_cores=4.0 * len(healthy),
        combined_load_cores=sum(s.utilisation * 4.0 for s in healthy),
        qos_p95_ms=qos,
    )


def test_window_averages_over_its_length_and_forgets_older_samples() -> None:
    w = PopWindow(window_s=3.0)
    w.add(pop_load(0.0, [1.0, 1.0], qos=100.0))
    w.add(pop_load(1.0, [0.5, 0.5]))
    m = w.add(pop_load(2.0, [0.0, 0.0], qos=50.0))
    assert m is not None
    assert m.load_cores == pytest.approx(4.0)  # mean of 8, 4, 0
    assert m.qos_p95_ms == pytest.approx(75.0)
    m = w.add(pop_load(3.0, [0.0, 0.0]))
    assert m is not None
    assert m.load_cores == pytest.approx(4.0 / 3)  # the sample at 0.0 left the window
    assert w.add(pop_load(2.5, [1.0, 1.0])) is None  # older than the newest: ignored


def test_no_verdict_on_less_than_a_window_after_a_start_or_a_silence() -> None:
    """Analytics restarted (or a PoP new, or silent longer than its window): one hot sample is
    no verdict; a whole window of them is (the chaos run's kill -9 of analytics flagged a PoP
    on one sample and the engine gave it a policy no load asked for)."""
    analyzer = Analyzer(AnalyticsConfig(defaults=RULES.model_copy(update={"window_s": 2.0})))
    assert analyzer.observe(pop_load(0.0, [0.95] * 4)) is None
    assert analyzer.state("a") is None
    assert analyzer.observe(pop_load(1.0, [0.95] * 4)) is None
    shed = analyzer.observe(pop_load(2.0, [0.95] * 4))
    assert shed is not None and shed.state is PopState.SHED
    # silent for longer than the window: the next sample starts a new one, the status stands
    assert analyzer.observe(pop_load(10.0, [0.1] * 4)) is None
    assert analyzer.observe(pop_load(11.0, [0.1] * 4)) is None
    assert analyzer.state("a").state is PopState.SHED  # type: ignore[union-attr]
    after = analyzer.observe(pop_load(12.0, [0.1] * 4))
    assert after is not None and after.state is PopState.CAN_TAKE


def test_a_down_server_leaves_capacity_at_once_and_its_headroom_shrinks() -> None:
    analyzer = Analyzer(AnalyticsConfig(defaults=RULES.model_copy(update={"window_s": 10.0})))
    analyzer.observe(pop_load(0.0, [0.2, 0.2, 0.2, 0.2]))  # the window's start
    first = analyzer.observe(pop_load(10.0, [0.2, 0.2, 0.2, 0.2]))
    later = analyzer.observe(pop_load(15.0, [0.2, 0.2, 0.2, 0.2], down=1))  # refresh_s later
    assert first is not None
    assert later is not None
    assert first.state is later.state is PopState.CAN_TAKE
    assert (first.capacity_cores, later.capacity_cores) == (16.0, 12.0)
    assert first.headroom_cores == pytest.approx(0.75 * 16 - 3.2)
    assert later.headroom_cores == pytest.approx(0.75 * 12 - (3.2 + 2.4) / 2)


def test_repo_config_loads_and_per_pop_overrides_merge(tmp_path: Path) -> None:
    config = load_config(REPO / "deploy" / "config" / "analytics.yaml")
    c = config.for_pop("c")
    assert c.shed.combined_over == Band(enter=0.8, exit=0.7)
    assert c.shed.any_server_over == config.defaults.shed.any_server_over
    assert config.for_pop("a") == config.defaults
    off = AnalyticsConfig(pops={"b": {"shed": {"qos_p95_over_ms": None}}})
    assert off.for_pop("b").shed.qos_p95_over_ms is None


@pytest.mark.parametrize(
    "bad",
    [
        {"defaults": {"shed": {"combined_over": {"enter": 0.7, "exit": 0.8}}}},
        {"defaults": {"can_take": {"combined_under": {"enter": 0.7, "exit": 0.6}}}},
        {"defaults": {"shed": {"servers_over": {"enter": 0.9, "exit": 0.8}}}},  # no quorum
        {"pops": {"a": {"window_s": -1}}},
        {"defaults": {"typo": 1}},
    ],
)
def test_bad_config_is_rejected_at_load(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AnalyticsConfig.model_validate(bad)
