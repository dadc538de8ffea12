"""The engine as a closed-loop controller: saturated measurements, integral action, one notion of
"needs to shed" shared with analytics (services/policy_engine/engine.py, model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from popshift.network import load_network
from schemas.messages import DataplaneStats, PolicyEvent, PopState, PopStatus, TierCounters
from services.policy_engine.damping import DampingConfig
from services.policy_engine.engine import EngineConfig, EngineState, Tick, decide

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")
CAPACITY = 10.0
SHED_ENTER, SHED_EXIT = 0.85, 0.75  # deploy/config/analytics.yaml's combined_over band


def engine(
    deadband: float = 0.0,
    effect_lag_s: float = 2.0,
    integral_gain: float = 0.5,
    reach_after_s: float | None = None,
    holdoff_s: float = 0.0,
) -> EngineState:
    cfg = EngineConfig(
        reach_after_s=reach_after_s,
        tier_mix={0: 1.0},
        damping=DampingConfig(deadband=deadband, max_step=1.0, holdoff_s=holdoff_s),
        lease_s=1e6,
        effect_lag_s=effect_lag_s,
        integral_gain=integral_gain,
    )
    return EngineState(NETWORK, cfg)


def status(pop: str, at: float, load: float, state: PopState) -> PopStatus:
    util = load / CAPACITY
    return PopStatus(
        pop=pop,
        at=at,
        state=state,
        since=0.0,
        utilisation=util,
        capacity_cores=CAPACITY,
        load_cores=load,
        excess_cores=max(0.0, load - 0.75 * CAPACITY) if state is PopState.SHED else 0.0,
    )


def counters(
    pop: str, at: float, local: float, forwarded: float = 0.0, received: float = 0.0
) -> DataplaneStats:
    """One tier-0 node's cumulative packet counters."""
    return DataplaneStats(
        pop=pop,
        node=f"{pop}-edge",
        at=at,
        tiers=[
            TierCounters(
                tier=0,
                local=int(local),
                inter_pop_forward=int(forwarded),
                received_from_peer=int(received),
            )
        ],
    )


def share_to(events: list[PolicyEvent], src: str, dst: str) -> float | None:
    for ev in events:
        if ev.source == src:
            return sum(s.share for s in ev.shares if s.destination == dst)
    return None


PACKETS_PER_CORE_S = 100.0


class SaturatingPlant:
    """Three PoPs of 10 cores whose busy cores are capped at 10 whatever the demand, as /proc
    shows them, while their forwarders count every packet that arrives. Shares act after
    ``lag`` s; analytics' verdict follows the combined_over band."""

    def __init__(
        self,
        demand: dict[str, float],
        lag: float = 2.0,
        counting: bool = True,
        background: dict[str, float] | None = None,
        long_lived: dict[str, float] | None = None,
    ) -> None:
        self.demand, self.lag, self.counting = demand, lag, counting
        self.background = background or {}  # busy cores no packet explains (cron, logs)
        # the part of a PoP's demand in connections older than any policy: no share moves it
        self.long_lived = long_lived or {}
        self.issued: list[PolicyEvent] = []
        self.states = dict.fromkeys(demand, PopState.NEUTRAL)
        self.packets = {pop: [0.0, 0.0, 0.0] for pop in demand}  # local, forwarded, received

    def shares(self, now: float) -> dict[str, PolicyEvent]:
        latest: dict[str, PolicyEvent] = {}
        for ev in self.issued:
            if ev.issued_at <= now - self.lag:
                latest[ev.source] = ev
        return latest

    def moved(self, src: str, share: float) -> float:
        """Cores a share of ``src`` moves: of its new connections only."""
        return share * self.demand[src] * (1.0 - self.long_lived.get(src, 0.0))

    def true_load(self, now: float) -> dict[str, float]:
        load = {pop: x + self.background.get(pop, 0.0) for pop, x in self.demand.items()}
        for src, ev in self.shares(now).items():
            for s in ev.shares:
                load[src] -= self.moved(src, s.share)
                load[s.destination] += self.moved(src, s.share)
        return load

    def count(self, state: EngineState, now: float) -> None:
        """One second of packets, then every forwarder's counters."""
        moved = dict.fromkeys(self.demand, 0.0)
        for src, ev in self.shares(now).items():
            for s in ev.shares:
                moved[src] += self.moved(src, s.share)
                self.packets[s.destination][2] += self.moved(src, s.share) * PACKETS_PER_CORE_S
        for pop, native in self.demand.items():
            self.packets[pop][0] += (native - moved[pop]) * PACKETS_PER_CORE_S
            self.packets[pop][1] += moved[pop] * PACKETS_PER_CORE_S
            decide(state, counters(pop, now, *self.packets[pop]), now)

    def step(self, state: EngineState, now: float) -> list[PolicyEvent]:
        if self.counting:
            self.count(state, now)
        for pop, load in self.true_load(now).items():
            busy = min(load, CAPACITY)
            util = busy / CAPACITY
            if util > SHED_ENTER or (self.states[pop] is PopState.SHED and util > SHED_EXIT):
                self.states[pop] = PopState.SHED
            else:
                self.states[pop] = PopState.NEUTRAL
            decide(state, status(pop, now, busy, self.states[pop]), now)
        _, events = decide(state, Tick(), now)
        self.issued += events
        return events


def run(plant: SaturatingPlant, state: EngineState, seconds: int) -> None:
    for now in range(seconds):
        plant.step(state, float(now))


def test_integral_action_keeps_moving_until_a_flagged_pop_is_below_the_threshold() -> None:
    # a needs 11 cores for its packets plus 1 no packet explains (cron, logs): the estimate from
    # cores per packet overstates what moving packets frees, creeps towards the truth in steps
    # below the dead-band, and stalls with a still over the shed band's exit, flagged for good.
    demand, background = {"a": 11.0, "b": 2.0, "c": 2.0}, {"a": 1.0}
    stalled = SaturatingPlant(dict(demand), background=background)
    run(stalled, engine(deadband=0.05, integral_gain=0.0), 90)
    assert stalled.true_load(90.0)["a"] > SHED_EXIT * CAPACITY + 0.1
    assert stalled.states["a"] is PopState.SHED

    closed = SaturatingPlant(dict(demand), background=background)
    state = engine(deadband=0.05)
    run(closed, state, 90)
    load = closed.true_load(90.0)
    assert load["a"] <= SHED_EXIT * CAPACITY  # the overload is gone, not only "acted on"
    assert closed.states["a"] is not PopState.SHED
    assert all(x <= CAPACITY * SHED_EXIT for x in load.values())  # nor moved onto b or c


def test_integral_waits_while_the_last_change_is_still_taking_effect() -> None:
    # Shares act only after 20 s: integrating every status would wind up while the first share
    # cannot show yet, and overshoot.
    plant = SaturatingPlant({"a": 11.0, "b": 2.0, "c": 2.0}, lag=20.0, background={"a": 1.0})
    state = engine(deadband=0.05, effect_lag_s=20.0)
    run(plant, state, 180)
    load = plant.true_load(180.0)["a"]
    assert SHED_EXIT * CAPACITY - 1.0 <= load <= SHED_EXIT * CAPACITY


def test_no_integral_while_no_receiver_has_room() -> None:
    plant = SaturatingPlant({"a": 16.0, "b": 9.0, "c": 9.0})
    state = engine()
    run(plant, state, 30)
    assert state.pops["a"].boost == 0.0


def test_learned_packet_cost_sees_through_a_saturated_measurement() -> None:
    plant = SaturatingPlant({"a": 5.0, "b": 2.0, "c": 2.0})
    state = engine(integral_gain=0.0)
    run(plant, state, 10)  # calm: 5 cores for 500 pkt/s, 0.01 cores per packet learned
    assert not plant.issued
    plant.demand["a"] = 15.0  # 1,500 pkt/s arrive; the servers show their 10 cores
    first = [ev for now in range(10, 12) for ev in plant.step(state, float(now))]
    # 15 cores of demand -> 7.5 must go: half of a's traffic at once, not a quarter.
    assert share_to(first, "a", "b") == pytest.approx(0.5, abs=0.02)


def test_a_pop_analytics_calls_neutral_is_not_asked_to_shed() -> None:
    state = engine()
    for pop, load in {"a": 8.0, "b": 2.0, "c": 2.0}.items():
        decide(state, status(pop, 1.0, load, PopState.NEUTRAL), 1.0)
    assert decide(state, Tick(), 1.0)[1] == []  # 0.80 is over the 0.75 target, but not flagged
    decide(state, status("a", 2.0, 9.0, PopState.SHED), 2.0)
    _, events = decide(state, Tick(), 2.0)
    assert share_to(events, "a", "b") == pytest.approx(1.5 / 9.0)


def test_relief_in_force_stays_while_the_relieved_pop_reads_neutral() -> None:
    plant = SaturatingPlant({"a": 12.0, "b": 2.0, "c": 2.0})
    state = engine()
    run(plant, state, 30)
    assert plant.states["a"] is PopState.NEUTRAL  # relieved: 7.5 cores busy
    for now in range(30, 90):
        plant.step(state, float(now))
        assert plant.states["a"] is PopState.NEUTRAL  # no cancel, no flapping back to shed
    assert state.policies["a"].shares[(0, "b")] == pytest.approx(4.5 / 12.0, abs=0.02)


def test_traffic_dearer_per_packet_is_not_estimated_below_what_is_measured() -> None:
    # Calm: 0.01 cores per packet learned. Then each packet costs twice as much (a flood of
    # handshakes): the same 500 pkt/s now need 10 cores and show 10 (saturated). The learned
    # ratio would say 5 cores; the measured one, a floor while saturated, says at least 10.
    plant = SaturatingPlant({"a": 5.0, "b": 2.0, "c": 2.0})
    state = engine(integral_gain=0.0)
    run(plant, state, 10)
    plant.background = {"a": 5.0}  # the extra cost, invisible in the packet counters
    events = [ev for now in range(10, 12) for ev in plant.step(state, float(now))]
    assert sum(state.native["a"].values()) >= CAPACITY - 1e-6
    assert (share_to(events, "a", "b") or 0.0) >= 0.25 - 0.02


def test_relief_no_longer_needed_is_given_back_to_the_last_share() -> None:
    # Given back in steps of 0.45 from 0.49: a last 0.04 is within the dead-band of nothing,
    # but a at 30 % needs no forwarding at all: the policy must end, not linger.
    plant = SaturatingPlant({"a": 15.3, "b": 2.0, "c": 2.0})
    state = EngineState(
        NETWORK,
        EngineConfig(
            tier_mix={0: 1.0},
            damping=DampingConfig(deadband=0.08, max_step=0.45, holdoff_s=5.0),
            lease_s=1e6,
            effect_lag_s=2.0,
        ),
    )
    run(plant, state, 30)
    share = state.policies["a"].shares[(0, "b")]
    assert 7.5 / 15.3 - 0.02 <= share < 0.45 + 0.08  # one step of 0.45 leaves less than 0.08
    plant.demand["a"] = 3.0
    for now in range(30, 120):
        plant.step(state, float(now))
    assert state.policies["a"].shares == {}


def test_a_share_that_moves_only_new_connections_is_measured_and_made_up_for() -> None:
    # 30 % of a's demand is in long-lived connections no policy moves (the lab's echo
    # connections): a share of x moves 0.7 x. Solving as if it moved x leaves a at about 9 cores
    # (the integral's 10 % of capacity is not enough), flagged for good; measuring what the
    # share reaches, the engine asks for the share that really brings a under its target.
    demand, long_lived = {"a": 13.0, "b": 2.0, "c": 2.0}, {"a": 0.3}
    blind = SaturatingPlant(dict(demand), long_lived=long_lived)
    run(blind, engine(deadband=0.05), 90)
    assert blind.states["a"] is PopState.SHED
    assert blind.true_load(90.0)["a"] > SHED_EXIT * CAPACITY + 0.5

    plant = SaturatingPlant(dict(demand), long_lived=long_lived)
    state = engine(deadband=0.05, reach_after_s=3.0)
    run(plant, state, 30)
    load = plant.true_load(30.0)
    assert load["a"] <= SHED_EXIT * CAPACITY + 0.05  # at its target within 30 s
    assert all(x <= SHED_EXIT * CAPACITY + 0.05 for x in load.values())  # b and c too
    assert state.pops["a"].reach[0] == pytest.approx(0.7, abs=0.02)
    share = state.policies["a"].shares[(0, "b")]
    assert share == pytest.approx(5.5 / (13.0 * 0.7), abs=0.03)  # 5.5 cores must move, no more


def test_reach_is_forgotten_with_the_policy() -> None:
    plant = SaturatingPlant({"a": 13.0, "b": 2.0, "c": 2.0}, long_lived={"a": 0.3})
    state = engine(deadband=0.05, reach_after_s=3.0)
    run(plant, state, 30)
    assert state.pops["a"].reach
    plant.demand["a"] = 3.0
    for now in range(30, 150):
        plant.step(state, float(now))
    assert state.policies["a"].shares == {}
    assert state.pops["a"].reach == {}  # the next overload starts from "a share moves its part"


def test_a_hot_server_does_not_wind_up_the_integral() -> None:
    # a is relieved to its target, but one of its servers stays hot (long-lived connections no
    # share moves): analytics keeps a flagged with that server's excess. Integrating it would
    # make the PoP shed ever further below its target.
    plant = SaturatingPlant({"a": 12.0, "b": 2.0, "c": 2.0})
    state = engine()
    run(plant, state, 30)
    share = state.policies["a"].shares[(0, "b")]
    for now in range(30, 60):
        plant.count(state, float(now))
        hot = status("a", float(now), 7.0, PopState.SHED).model_copy(update={"excess_cores": 1.0})
        decide(state, hot, float(now))
        decide(state, Tick(), float(now))
    assert state.pops["a"].boost == 0.0
    assert state.policies["a"].shares[(0, "b")] == pytest.approx(share, abs=0.02)


def test_a_relay_passes_on_at_once_what_a_flagged_pop_sends_it() -> None:
    """a's demand keeps growing, so it sends b more, round after round; b must pass its own
    traffic on to c to make room, and does so as its inflow grows, not once its hold-off is
    over: it is never flagged itself, and both end below the shed threshold."""
    plant = SaturatingPlant({"a": 9.0, "b": 5.0, "c": 1.0})
    state = engine(deadband=0.05, holdoff_s=30.0, integral_gain=0.0)
    b_states, b_utils = [], []
    for now in range(60):
        plant.demand["a"] = min(13.0, 9.0 + 0.2 * now)  # 13 cores 20 s in
        plant.step(state, float(now))
        b_states.append(plant.states["b"])
        b_utils.append(round(plant.true_load(float(now))["b"] / CAPACITY, 2))
    onward = [share_to([ev], "b", "c") or 0.0 for ev in plant.issued if ev.source == "b"]
    assert max(onward, default=0.0) > 0.3  # b did relay to c
    assert PopState.SHED not in b_states, b_utils
    load = plant.true_load(59.0)
    assert load["a"] / CAPACITY < SHED_ENTER and load["b"] / CAPACITY < SHED_ENTER


def test_a_low_estimate_of_a_pop_measured_at_its_target_gives_nothing_back() -> None:
    """The estimate swings with the counters (the lab: by a fifth tick to tick); a PoP
    measured at its target keeps its relief even on a tick whose estimate says it sheds far
    more than it needs. Measured below target by the give-back margin, it gives back."""
    state = engine()
    packets = {"a": 0.0, "b": 0.0, "c": 0.0}

    def tick(now: float, loads: dict[str, float], rates: dict[str, float], a: PopState) -> None:
        for pop, load in loads.items():
            packets[pop] += rates[pop]
            decide(state, counters(pop, now, packets[pop]), now)
            flag = a if pop == "a" else PopState.NEUTRAL
            decide(state, status(pop, now, load, flag), now)
        decide(state, Tick(), now)

    calm = {"a": 7.0, "b": 2.0, "c": 2.0}
    for now in (0.0, 1.0):  # 0.01 cores a packet learned
        tick(now, calm, {p: x * PACKETS_PER_CORE_S for p, x in calm.items()}, PopState.NEUTRAL)
    tick(2.0, {**calm, "a": 9.0}, {"a": 900.0, "b": 200.0, "c": 200.0}, PopState.SHED)
    share = state.policies["a"].shares[(0, "b")]
    assert share == pytest.approx(1.5 / 9.0, abs=0.02)
    # measured at 0.76 (its target), counters a third low: the estimate says 6 cores, not 9
    for now in (3.0, 4.0, 5.0):
        tick(now, {**calm, "a": 7.6}, {"a": 600.0, "b": 200.0, "c": 200.0}, PopState.NEUTRAL)
    assert state.policies["a"].shares.get((0, "b")) == share
    for now in (6.0, 7.0, 8.0):  # measured at 0.55: far below its target, it gives back
        tick(now, {**calm, "a": 5.5}, {"a": 600.0, "b": 200.0, "c": 200.0}, PopState.NEUTRAL)
    assert state.policies["a"].shares.get((0, "b"), 0.0) < share
