"""The relief path's own delays, without root: the engine acts on a changed status at once, and
the lab's analytics window does not flag a PoP on one noisy sample."""

from __future__ import annotations

from lab.settings import ANALYTICS, HEARTBEAT_S, NETWORK
from popshift import topics as t
from popshift.bus import MemoryBus
from popshift.network import load_network
from schemas.messages import PolicyEvent, PopLoad, PopState, PopStatus, ServerLoad
from services.analytics.config import load_config
from services.analytics.window import Analyzer
from services.policy_engine.service import PolicyEngineService
from services.policy_engine.settings import PolicySettings

NOW = 100.0
SETTINGS = PolicySettings(
    policy_tick_s=3600.0, policy_holdoff_s=0.0, policy_max_step=1.0, policy_deadband=0.0,
    policy_tier_mix={0: 1.0}, policy_group="pe",
)  # fmt: skip


def pop_status(pop: str, util: float, state: PopState, at: float = NOW) -> PopStatus:
    return PopStatus(pop=pop, at=at, state=state, since=at, utilisation=util,
                     capacity_cores=1.0, load_cores=util)  # fmt: skip


def test_a_status_that_changes_state_is_acted_on_without_waiting_for_the_tick() -> None:
    bus = MemoryBus()
    producer = bus.producer()
    for pop in "abc":
        producer.send(t.POP_STATUS, pop, pop_status(pop, 0.3, PopState.CAN_TAKE))
    clock = [NOW]
    service = PolicyEngineService(SETTINGS, load_network(NETWORK), bus, clock=lambda: clock[0])
    service.poll(0.0)  # first statuses: a tick, nothing to do
    assert bus.replay(t.POLICIES) == []
    clock[0] += 0.1
    producer.send(t.POP_STATUS, "a", pop_status("a", 0.99, PopState.SHED, clock[0]))
    service.poll(0.0)  # the tick is an hour away: only the changed state can have decided
    policies: list[PolicyEvent] = bus.replay(t.POLICIES)
    assert [(p.source, {s.destination for s in p.shares}) for p in policies] == [("a", {"b"})]
    # the same state again (analytics' refresh) waits for the tick
    producer.send(t.POP_STATUS, "a", pop_status("a", 0.97, PopState.SHED, clock[0] + 0.1))
    service.poll(0.0)
    assert not service.state_changed
    assert len(bus.replay(t.POLICIES)) == 1


def load(pop: str, at: float, util: float) -> PopLoad:
    servers = [ServerLoad(server=f"s{i}", address=f"10.100.1.1{i}", utilisation=util,
                          capacity_cores=0.1, healthy=True) for i in (1, 2)]  # fmt: skip
    return PopLoad(pop=pop, at=at, servers=servers, combined_load_cores=0.2 * util,
                   healthy_capacity_cores=0.2)  # fmt: skip


def test_the_lab_window_does_not_flag_a_pop_on_one_noisy_sample() -> None:
    """One sample at 100 % among samples at the can-take level stays unflagged; the same load
    held for the window is flagged (the window is honest, not deaf)."""
    config = load_config(str(ANALYTICS))
    rules = config.for_pop("a")
    interval = HEARTBEAT_S  # the lab's pop-load interval
    analyzer = Analyzer(config, {"a": 0.75})
    at, states = 0.0, []
    for util in [0.6] * 8 + [1.0] + [0.6] * 8:
        at += interval
        if (s := analyzer.observe(load("a", at, util))) is not None:
            states.append(s.state)
    assert PopState.SHED not in states
    steps = round(rules.window_s / interval)
    for _ in range(steps + 1):
        at += interval
        analyzer.observe(load("a", at, 1.0))
    state = analyzer.state("a")
    assert state is not None and state.state is PopState.SHED
