"""The policy engine's pure core on a virtual clock: damping, native demand, overrides, decide()."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popshift.network import load_network
from schemas.messages import (
    DataplaneStats,
    PolicyAction,
    PolicyEvent,
    PopState,
    PopStatus,
    TierCounters,
)
from services.policy_engine import engine as engine_module
from services.policy_engine.damping import DampingConfig, damp
from services.policy_engine.engine import (
    EngineConfig,
    EngineState,
    SetOverrides,
    Tick,
    UnknownPop,
    decide,
    restore,
)
from services.policy_engine.model import TierRates, counter_rates, estimate_native
from services.policy_engine.overrides import (
    Forbid,
    InvalidOverride,
    Overrides,
    Pin,
    load_overrides,
)
from services.policy_engine.solver import Budget, Problem, Solution, solve_with_budget

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")
CFG = DampingConfig(deadband=0.02, max_step=0.1, holdoff_s=10.0)


# --- damping -------------------------------------------------------------------------------


def test_damping_caps_the_step_and_holds_off_after_a_change() -> None:
    target = {(0, "b"): 0.35}
    first = damp({}, target, last_change=None, now=0.0, config=CFG)
    assert first == {(0, "b"): pytest.approx(0.1)}
    held = damp(first, target, last_change=0.0, now=5.0, config=CFG)
    assert held == first
    second = damp(first, target, last_change=0.0, now=10.0, config=CFG)
    assert second == {(0, "b"): pytest.approx(0.2)}


def test_damping_dead_band_ignores_small_moves_but_never_blocks_a_cancel() -> None:
    current = {(0, "b"): 0.30, (0, "c"): 0.01}
    out = damp(current, {(0, "b"): 0.31}, last_change=None, now=0.0, config=CFG)
    assert out == {(0, "b"): pytest.approx(0.30)}  # c goes to zero, b's 0.01 is in the band
    assert damp({}, {(0, "b"): 0.015}, last_change=None, now=0.0, config=CFG) == {}


def test_forced_shares_bypass_hold_off_and_step() -> None:
    current = {(0, "b"): 0.5}
    out = damp(
        current,
        {(0, "b"): 0.5},
        last_change=99.0,
        now=100.0,
        config=CFG,
        forced={(0, "b"): 0.0, (0, "c"): 0.4},
    )
    assert out == {(0, "c"): pytest.approx(0.4)}


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["b", "c", "d"]), st.floats(0.0, 1.0), max_size=3),
    st.dictionaries(st.sampled_from(["b", "c", "d"]), st.floats(0.0, 1.0), max_size=3),
    st.floats(0.01, 1.0),
)
def test_damped_shares_stay_fractions_and_move_toward_the_target(cur, tgt, step) -> None:
    def fit(d: dict[str, float]) -> dict[tuple[int, str], float]:
        total = sum(d.values())
        return {(0, k): v / max(1.0, total) for k, v in d.items()}

    current, target = fit(cur), fit(tgt)
    cfg = DampingConfig(deadband=0.0, max_step=step, holdoff_s=0.0)
    out = damp(current, target, last_change=None, now=0.0, config=cfg)
    assert sum(out.values()) <= 1.0 + 1e-9
    for key in set(current) | set(target):
        before, after, want = current.get(key, 0.0), out.get(key, 0.0), target.get(key, 0.0)
        assert abs(after - before) <= step + 1e-9
        assert min(before, want) - 1e-9 <= after <= max(before, want) + 1e-9


# --- native demand -------------------------------------------------------------------------


def stats(at: float, local: int, out: int, received: int, tier: int = 0) -> DataplaneStats:
    return DataplaneStats(
        pop="b",
        node="b-edge1",
        at=at,
        tiers=[
            TierCounters(tier=tier, local=local, inter_pop_forward=out, received_from_peer=received)
        ],
    )


def test_counter_rates_and_restart() -> None:
    rates = counter_rates(stats(10.0, 1000, 100, 50), stats(12.0, 3000, 300, 450))
    assert rates == {0: TierRates(local=1000.0, forwarded=100.0, received=200.0)}
    restarted = counter_rates(stats(10.0, 1000, 100, 50), stats(12.0, 20, 2, 4))
    assert restarted == {0: TierRates(local=10.0, forwarded=1.0, received=2.0)}


def test_native_demand_removes_what_comes_in_and_adds_what_goes_out() -> None:
    # 6 cores measured; 600 pkt/s of our own kept, 300 received, 200 of ours forwarded out.
    rates = {0: TierRates(local=400.0, forwarded=200.0, received=300.0), 1: TierRates(200.0)}
    native = estimate_native(6.0, rates, [0, 1, 2], {})
    # 6 cores / 900 processed pkt/s: tier 0 native = (400+200) * 6/900 = 4, tier 1 = 200 * 6/900.
    assert native == {0: pytest.approx(4.0), 1: pytest.approx(4.0 / 3.0), 2: 0.0}
    fallback = estimate_native(6.0, {}, [0, 1], {0: 3.0, 1: 1.0}, moved_out=2.0, moved_in=1.0)
    assert fallback == {0: pytest.approx(5.25), 1: pytest.approx(1.75)}


# --- overrides -----------------------------------------------------------------------------


def test_overrides_validate_and_merge(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pinned 1\.200"):
        Overrides(
            pins=[
                Pin(source="a", destination="b", tier=0, share=0.7),
                Pin(source="a", destination="c", tier=0, share=0.5),
            ]
        )
    with pytest.raises(InvalidOverride, match="unknown PoP"):
        Overrides(drain=["zzz"]).check(NETWORK)
    # What every table writer would refuse (popshift/admission.py) is refused here already.
    for pin, reason in [
        (Pin(source="a", destination="c", tier=0, share=0.2), "latency bound: a->c is 45 ms"),
        (Pin(source="a", destination="b", tier=2, share=0.2), "tier not forwardable"),
    ]:
        with pytest.raises(InvalidOverride, match=reason):
            Overrides(pins=[pin]).check(NETWORK)
    path = tmp_path / "overrides.yaml"
    path.write_text("pins: [{source: a, destination: b, tier: 0, share: 0.2}]\ndrain: [c]\n")
    from_file = load_overrides(path).check(NETWORK)
    cli = Overrides(
        pins=[Pin(source="a", destination="b", tier=0, share=0.3)],
        forbid=[Forbid(source="b", destination="c")],
    )
    merged = from_file.merged(cli)
    assert merged.pinned == {(0, "a", "b"): 0.3}
    assert merged.forbidden == {("b", "c")} and merged.drain == ["c"]
    (tmp_path / "bad.yaml").write_text("pins: [{source: a}]\n")
    with pytest.raises(InvalidOverride, match=r"bad\.yaml"):
        load_overrides(tmp_path / "bad.yaml")


# --- decide() ------------------------------------------------------------------------------


def status(pop: str, at: float, load: float, capacity: float = 10.0) -> PopStatus:
    util = load / capacity
    return PopStatus(
        pop=pop,
        at=at,
        state=PopState.SHED if util > 0.75 else PopState.CAN_TAKE,
        since=0.0,
        utilisation=util,
        capacity_cores=capacity,
        load_cores=load,
        rule="combined_load>0.75" if util > 0.75 else None,
    )


def engine(lease_s: float | None = 1e6, **damping: float) -> EngineState:
    cfg = DampingConfig(**{"deadband": 0.0, "max_step": 1.0, "holdoff_s": 0.0, **damping})
    # Tier mix: all of a PoP's load is bulk (tier 0) unless counters say otherwise. A long lease
    # unless a test is about leases, so that "nothing changed" means no event at all.
    return EngineState(NETWORK, EngineConfig(tier_mix={0: 1.0}, damping=cfg, lease_s=lease_s))


def feed(state: EngineState, now: float, loads: dict[str, float]) -> list[PolicyEvent]:
    for pop, load in loads.items():
        decide(state, status(pop, now, load), now)
    return decide(state, Tick(), now)[1]


def by_source(events: list[PolicyEvent]) -> dict[str, PolicyEvent]:
    return {e.source: e for e in events}


def test_overload_gives_new_policies_with_reasons_and_rising_versions() -> None:
    state = engine()
    events = by_source(feed(state, 1.0, {"a": 9.0, "b": 7.5, "c": 2.0}))
    # Only a cascade reaches c: a -> b (10 ms) and b -> c (12 ms); a -> c is 45 ms > 30.
    assert set(events) == {"a", "b"}
    a, b = events["a"], events["b"]
    assert a.action is b.action is PolicyAction.NEW
    assert [(s.tier, s.destination) for s in a.shares] == [(0, "b")]
    assert a.shares[0].share == pytest.approx(1.5 / 9.0)
    assert [(s.tier, s.destination) for s in b.shares] == [(0, "c")]
    assert a.reason.trigger_pop == "a" and a.reason.rule.startswith("shed: a at 0.90")
    assert b.reason.trigger_pop == "a" and b.reason.rule.startswith("cascade")
    assert a.reason.expected_utilisation == {"a": pytest.approx(0.75), "b": pytest.approx(0.75)}
    assert not a.reason.infeasible
    assert sorted(e.version for e in events.values()) == [1, 2]
    # Nothing changed: nothing to say.
    assert feed(state, 2.0, {}) == []


def test_a_solve_is_reused_until_an_input_that_matters_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems: list[Problem] = []

    def counted(problem: Problem, budget: Budget) -> Solution:
        problems.append(problem)
        return solve_with_budget(problem, budget)

    monkeypatch.setattr(engine_module, "solve_with_budget", counted)
    state = engine()
    feed(state, 1.0, {"a": 9.0, "b": 2.0, "c": 2.0})
    assert len(problems) == 1
    feed(state, 2.0, {"a": 9.05, "b": 2.0, "c": 2.0})  # noise: 0.5 % of a's capacity
    assert len(problems) == 1
    feed(state, 3.0, {"a": 9.5, "b": 2.0, "c": 2.0})  # 5 %: the demand moved
    assert len(problems) == 2
    feed(state, 4.0, {"a": 9.5, "b": 8.0, "c": 2.0})  # b is flagged too: at once
    assert len(problems) == 3
    decide(state, SetOverrides(Overrides(drain=["c"])), 5.0)
    feed(state, 5.0, {"a": 9.5, "b": 8.0, "c": 2.0})  # an override: at once
    assert len(problems) == 4
    decide(state, dead("c", 6.0), 6.0)
    feed(state, 6.0, {"a": 9.5, "b": 8.0})  # a dead PoP: at once
    assert len(problems) == 5


class Plant:
    """Loads as a network would measure them: native minus out plus in, for the shares issued at
    least ``lag`` seconds ago (only new connections move)."""

    def __init__(self, native: dict[str, float], lag: float = 5.0) -> None:
        self.native, self.lag = native, lag
        self.issued: list[PolicyEvent] = []

    def loads(self, now: float) -> dict[str, float]:
        latest: dict[str, PolicyEvent] = {}
        for ev in self.issued:
            if ev.issued_at <= now - self.lag:
                latest[ev.source] = ev
        load = dict(self.native)
        for ev in latest.values():
            for s in ev.shares:
                load[ev.source] -= s.share * self.native[ev.source]
                load[s.destination] += s.share * self.native[ev.source]
        return load

    def step(self, state: EngineState, now: float) -> list[PolicyEvent]:
        events = feed(state, now, self.loads(now))
        self.issued += events
        return events


def test_relief_goes_at_once_and_giving_back_walks_down_to_a_cancel() -> None:
    state = engine(max_step=0.1, holdoff_s=10.0, deadband=0.02)
    plant = Plant({"a": 12.0, "b": 2.0, "c": 2.0})
    shares = [
        (now, ev.shares[0].share)
        for now in range(0, 100, 5)
        for ev in plant.step(state, float(now))
        if ev.source == "a"
    ]
    # a is flagged: the whole target 4.5/12 = 0.375 at once; then a steady state is quiet.
    assert [t for t, _ in shares] == [0]
    assert shares[0][1] == pytest.approx(0.375)
    assert plant.loads(100.0)["a"] == pytest.approx(7.5)
    plant.native["a"] = 3.0  # the spike is over
    tail = [ev for now in range(100, 200, 5) for ev in plant.step(state, float(now))]
    assert [ev.action for ev in tail] == [PolicyAction.UPDATE] * 3 + [PolicyAction.CANCEL]
    assert [ev.shares[0].share for ev in tail[:3]] == pytest.approx([0.275, 0.175, 0.075])
    versions = [ev.version for ev in plant.issued]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_overrides_apply_at_once_and_unknown_pops_are_refused() -> None:
    state = engine(max_step=0.05, holdoff_s=1000.0)
    feed(state, 1.0, {"a": 5.0, "b": 5.0, "c": 5.0})
    decide(
        state,
        SetOverrides(
            Overrides(pins=[Pin(source="c", destination="b", tier=1, share=0.25)], drain=["a"])
        ),
        2.0,
    )
    ev = by_source(feed(state, 2.0, {}))
    assert [(s.tier, s.destination, s.share) for s in ev["c"].shares] == [(1, "b", 0.25)]
    assert ev["c"].reason.rule.startswith("override: pinned")
    # a is drained: its movable traffic leaves now, nothing is sent to it.
    assert ev["a"].reason.rule.startswith("override: a drained")
    assert all(s.destination != "a" for e in ev.values() for s in e.shares)
    with pytest.raises(UnknownPop):
        decide(state, status("zzz", 1.0, 1.0), 3.0)


def test_restart_from_the_compacted_topic_changes_nothing() -> None:
    state = engine()
    events = feed(state, 1.0, {"a": 9.0, "b": 7.5, "c": 2.0})
    again = restore(engine(), events)
    assert again.version == state.version
    # The same inputs after the restart: the policies already match, so nothing is emitted.
    assert feed(again, 1.0, {"a": 9.0, "b": 7.5, "c": 2.0}) == []
    assert {s: p.shares for s, p in again.policies.items()} == {
        s: p.shares for s, p in state.policies.items()
    }


def test_stale_status_is_fail_static() -> None:
    state = engine()
    feed(state, 1.0, {"a": 9.0, "b": 2.0, "c": 2.0})
    assert decide(state, Tick(), 1000.0)[1] == []


def test_counters_keep_received_traffic_out_of_native_demand() -> None:
    state = engine()
    # b measures 9 of 10 cores, but a third of what it processes is a's traffic forwarded in:
    # its native demand is 6, under target, so b must not shed (it would re-forward a's load).
    for at, local, received in [(0.0, 0, 0), (10.0, 20_000, 10_000)]:
        decide(state, stats_for("b", at, local=local, received=received), at)
    events = by_source(feed(state, 10.0, {"a": 6.0, "b": 9.0, "c": 2.0}))
    assert state.native["b"][0] == pytest.approx(6.0)
    assert "b" not in events


def stats_for(pop: str, at: float, local: int, received: int) -> DataplaneStats:
    return DataplaneStats(
        pop=pop,
        node=f"{pop}-edge1",
        at=at,
        tiers=[TierCounters(tier=0, local=local, received_from_peer=received)],
    )


def test_receivers_that_can_take_only_part_get_that_part_and_the_reason_says_so() -> None:
    state = engine()
    # a at 99 %; b is slightly over target and can only relay to c, which has 0.5 cores of
    # room; a->c is beyond the bound. Nobody can reach the target: the excess is spread, a and
    # b end equally over (0.825, both under the 0.85 shed threshold), not a alone at 0.95.
    events = by_source(feed(state, 1.0, {"a": 9.9, "b": 7.6, "c": 7.0}))
    a = events["a"]
    assert a.action is PolicyAction.NEW
    assert [(s.tier, s.destination) for s in a.shares] == [(0, "b")]
    assert a.shares[0].share == pytest.approx(1.65 / 9.9)
    assert a.reason.rule.startswith("partial: receivers full, a at 0.99 > target 0.75")
    assert "0.82 expected after" in a.reason.rule
    assert a.reason.infeasible
    assert a.reason.expected_utilisation == {"a": pytest.approx(0.825), "b": pytest.approx(0.825)}
    assert [(s.tier, s.destination) for s in events["b"].shares] == [(0, "c")]


def test_full_receivers_cancel_with_a_partial_reason_not_recovered() -> None:
    state = engine()
    first = by_source(feed(state, 1.0, {"a": 9.9, "b": 7.0, "c": 7.5}))
    assert first["a"].shares[0].share == pytest.approx(1.65 / 9.9)
    # Every PoP's own demand grows to a's: moving anything only moves the overload.
    again = by_source(feed(state, 10.0, {"a": 9.9, "b": 9.9, "c": 9.9}))
    a = again["a"]
    assert a.action is PolicyAction.CANCEL
    assert a.reason.rule.startswith("partial: receivers full, nothing can move: a at 0.99")
    assert "recovered" not in a.reason.rule
    assert a.reason.infeasible


# --- dead destinations ---------------------------------------------------------------------


def dead(pop: str, at: float) -> PopStatus:
    """What analytics says of a PoP whose servers are all down (ingest: no healthy capacity)."""
    return PopStatus(
        pop=pop,
        at=at,
        state=PopState.SHED,
        since=at,
        utilisation=0.0,
        capacity_cores=0.0,
        load_cores=0.0,
        rule="no_healthy_capacity",
    )


def test_a_dead_destination_is_cut_at_the_next_tick_without_damping() -> None:
    state = engine(max_step=0.1, holdoff_s=1000.0, deadband=0.05)
    first = by_source(feed(state, 1.0, {"a": 9.0, "b": 2.0, "c": 2.0}))
    assert [s.destination for s in first["a"].shares] == ["b"]
    assert first["a"].shares[0].share == pytest.approx(1.5 / 9.0)  # relief is not damped
    # b dies inside a's hold-off: a's share to b goes now (back to local), not 0.1 per round.
    decide(state, dead("b", 2.0), 2.0)
    events = by_source(feed(state, 2.0, {"a": 9.0, "c": 2.0}))
    a = events["a"]
    assert a.action is PolicyAction.CANCEL and a.shares == []
    assert a.reason.rule.startswith("dead: b without healthy capacity, cut at once")
    assert a.version > first["a"].version
    # Nothing is sent to a dead PoP afterwards, and its own capacity is never used.
    later = feed(state, 1100.0, {"a": 9.0, "c": 2.0}) + feed(state, 2200.0, {"a": 9.0, "c": 2.0})
    assert all(s.destination != "b" for e in later for s in e.shares)
    # It comes back with capacity: it may take traffic again.
    back = by_source(feed(state, 3300.0, {"a": 9.0, "b": 2.0, "c": 2.0}))
    assert [s.destination for s in back["a"].shares] == ["b"]


def test_a_dead_destination_is_cut_even_while_every_other_status_is_stale() -> None:
    state = engine(max_step=1.0)
    assert by_source(feed(state, 1.0, {"a": 9.0, "b": 2.0, "c": 2.0}))["a"].shares
    # 100 s later analytics has said nothing of a or c (fail static), but b is reported dead.
    decide(state, dead("b", 100.0), 100.0)
    events = by_source(decide(state, Tick(), 100.0)[1])
    assert set(events) == {"a"} and events["a"].action is PolicyAction.CANCEL
    assert state.policies["a"].shares == {}


# --- leases --------------------------------------------------------------------------------


def test_policies_carry_a_lease_and_are_renewed_while_inputs_are_fresh() -> None:
    state = engine(lease_s=None)  # the default: 3 engine ticks of 1 s
    assert state.config.lease == pytest.approx(3.0)
    loads = {"a": 9.0, "b": 2.0, "c": 2.0}
    first = by_source(feed(state, 1.0, loads))["a"]
    assert first.expires_at == pytest.approx(4.0)
    renewed = by_source(feed(state, 2.0, loads))["a"]
    assert renewed.action is PolicyAction.UPDATE and renewed.shares == first.shares
    assert renewed.version > first.version and renewed.expires_at == pytest.approx(5.0)
    assert renewed.reason.rule.startswith("renewed: shed: a at 0.90")
    assert "renewed: renewed" not in by_source(feed(state, 3.0, loads))["a"].reason.rule
    # A source without a policy (c) is not renewed: nothing to keep in force.
    assert "c" not in by_source(feed(state, 4.0, loads))


def test_renewals_do_not_reset_the_hold_off() -> None:
    state = engine(lease_s=3.0, max_step=0.1, holdoff_s=10.0)
    plant = Plant({"a": 12.0, "b": 2.0, "c": 2.0}, lag=0.0)
    changes = []
    for now in range(0, 25):
        for ev in plant.step(state, float(now)):
            if ev.source == "a" and not ev.reason.rule.startswith("renewed"):
                changes.append((now, round(ev.shares[0].share, 3)))
        plant.native["a"] = 8.0  # after the first round: less to shed, given back in steps
    assert changes == [(0, 0.375), (10, 0.275), (20, 0.175)]


def test_a_source_with_stale_inputs_is_not_renewed_and_lapses_to_local() -> None:
    state = engine(lease_s=3.0)
    events = feed(state, 0.0, {"a": 9.0, "b": 2.0, "c": 2.0})
    for now in range(1, 60):  # a's status stops at t=0; b's and c's keep coming
        events += feed(state, float(now), {"b": 2.0, "c": 2.0})
    a = [e for e in events if e.source == "a"]
    max_age = state.config.status_max_age_s
    renewals = [e for e in a if e.shares]
    assert max(e.issued_at for e in renewals) == pytest.approx(max_age)
    assert all(e.expires_at is not None for e in a)
    assert max(e.expires_at or 0.0 for e in renewals) == pytest.approx(max_age + 3.0)
    last = a[-1]
    assert last.action is PolicyAction.CANCEL and last.issued_at == pytest.approx(max_age + 3.0)
    assert last.reason.rule.startswith("lapsed: no pop-status from a")
    assert state.policies["a"].shares == {}
    # a's status returns: a new policy from local.
    again = by_source(feed(state, 60.0, {"a": 9.0, "b": 2.0, "c": 2.0}))["a"]
    assert again.action is PolicyAction.NEW and again.version > last.version


def test_a_silent_bus_neither_cancels_nor_lapses_a_policy_within_the_grace() -> None:
    state = engine(lease_s=3.0)
    first = by_source(feed(state, 0.0, {"a": 9.0, "b": 2.0, "c": 2.0}))["a"]
    quiet = [e for now in range(1, 40) for e in decide(state, Tick(), float(now))[1]]
    # 39 s without any input (within the grace): renewals while the statuses last, nothing else.
    assert quiet and all(
        e.shares == first.shares and e.reason.rule.startswith("renewed: ") for e in quiet
    )
    assert state.silence.total_granted_s == pytest.approx(39.0)
    back = by_source(feed(state, 40.0, {"a": 9.0, "b": 2.0, "c": 2.0}))["a"]
    # Carried on from the policy in force (an update), not started again from local (new).
    assert back.action is PolicyAction.UPDATE and not back.reason.rule.startswith("lapsed")
    # Beyond the grace the leases run out as with a live bus: back to local, said on the topic.
    grace = state.config.bus_outage_grace_s
    later = [e for now in range(41, 300) for e in decide(state, Tick(), float(now))[1]]
    (cancel,) = [e for e in later if e.source == "a" and e.action is PolicyAction.CANCEL]
    assert cancel.reason.rule.startswith("lapsed")
    # renewals go on until the bus is found silent (3 s), then lease + grace, then the lapse is
    # called once the lease has been out for the silence period too
    assert 40.0 + 3.0 + grace <= cancel.issued_at <= 40.0 + 3.0 + 3.0 + grace + 3.0


def test_restored_policies_keep_their_lease() -> None:
    state = engine(lease_s=3.0)
    events = feed(state, 1.0, {"a": 9.0, "b": 2.0, "c": 2.0})
    again = restore(engine(lease_s=3.0), events)
    assert again.policies["a"].expires_at == pytest.approx(4.0)


def test_a_counter_round_is_folded_as_its_messages_one_by_one() -> None:
    """CounterRound (the simulator's forwarders as arrays) leaves the state its DataplaneStats
    would: rates the same to the bit, first reports only remembered, late or duplicate ones
    dropped, a counter gone down a restart, a PoP silent for a while diffed against its last."""
    import numpy as np

    from services.policy_engine.engine import CounterRound, fresh_rates

    rng = np.random.default_rng(7)
    names = NETWORK.pop_names
    tiers = [t.id for t in NETWORK.tiers]
    by_messages = EngineState(NETWORK, EngineConfig())
    by_rounds = EngineState(NETWORK, EngineConfig())
    counts = np.zeros((len(names), len(tiers), 3), np.int64)
    ats = [10.0, 20.0, 30.0, 30.0, 25.0, 40.0, 50.0, 60.0]  # a duplicate, then a late one
    for k, at in enumerate(ats):
        counts = counts + rng.integers(0, 10**9, counts.shape)
        if k == 5:
            counts[1, 2] = rng.integers(0, 1000, 3)  # b restarted: tier 2's counters began again
        live = [i for i in range(len(names)) if not (k in (2, 3) and i == 2)]  # c silent a while
        for i in live:
            message = DataplaneStats(
                pop=names[i],
                node="edge",
                at=at,
                tiers=[
                    TierCounters(
                        tier=t,
                        local=int(counts[i, j, 0]),
                        inter_pop_forward=int(counts[i, j, 1]),
                        received_from_peer=int(counts[i, j, 2]),
                    )
                    for j, t in enumerate(tiers)
                ],
            )
            decide(by_messages, message, now=at)
        pops = [names[i] for i in live]
        decide(by_rounds, CounterRound("edge", at, pops, counts[live].copy()), now=at)
        rounds, rounds_has = fresh_rates(by_rounds, list(names), at)
        messages, messages_has = fresh_rates(by_messages, list(names), at)
        assert rounds.tolist() == messages.tolist()
        assert rounds_has.tolist() == messages_has.tolist()
    assert rounds_has.all()
    assert by_rounds.silence == by_messages.silence
    with pytest.raises(UnknownPop):
        decide(by_rounds, CounterRound("edge", 70.0, ["nowhere"], counts[:1]), now=70.0)


def test_a_status_round_is_folded_as_its_messages_and_refuses_an_unknown_pop() -> None:
    """StatusRound (the simulator's analytics round, plain rows) leaves the statuses its
    PopStatus messages would; a row of a PoP the network does not know is refused, as a
    message of it is."""
    from schemas.messages import PopStatusRow
    from services.policy_engine.engine import StatusRound

    rows = [
        PopStatusRow(
            name, 5.0, PopState.SHED if name == "a" else PopState.NEUTRAL, 1.0, 0.9, 10.0, 9.0
        )
        for name in NETWORK.pop_names
    ]
    by_messages = EngineState(NETWORK, EngineConfig())
    by_round = EngineState(NETWORK, EngineConfig())
    for row in rows:
        decide(by_messages, PopStatus(**row._asdict()), now=5.0)
    decide(by_round, StatusRound(rows), now=5.0)
    for name in NETWORK.pop_names:
        got, want = by_round.pops[name].status, by_messages.pops[name].status
        assert got is not None and want is not None
        assert PopStatus(**got._asdict()) == want  # type: ignore[union-attr]
    assert by_round.silence == by_messages.silence
    with pytest.raises(UnknownPop):
        decide(by_round, StatusRound([rows[0]._replace(pop="nowhere")]), now=6.0)
