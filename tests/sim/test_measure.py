"""What the simulator's controllers can measure: capped busy cores, probe latency, delay."""

from __future__ import annotations

import itertools

import numpy as np

from sim.engine import Engine
from sim.measure import QueueModel, QueueParams, measured_busy
from sim.strategies.base import Action, Observation
from sim.world import build_world
from tests.sim.worlds import tiny

PARAMS = QueueParams(service_ms=20.0, cores_per_server=64.0, probe_timeout_ms=2000.0)


def steady_p95(rho: float) -> float:
    model = QueueModel(1, PARAMS)
    return float(model.step(np.array([rho * 100.0]), np.array([100.0]), 1.0)[0])


def test_below_saturation_latency_grows_with_load_and_stays_near_the_service_time() -> None:
    p95 = [steady_p95(rho) for rho in (0.3, 0.7, 0.9, 0.99)]
    assert p95 == sorted(p95) and len(set(p95)) == 4
    assert p95[0] < 1.01 * PARAMS.service_ms  # 64 cores a server: no waiting at 30 %
    assert p95[-1] > 2.0 * PARAMS.service_ms  # at 99 % the queue shows


def test_past_saturation_the_excess_shows_as_a_backlog_that_grows_then_drains() -> None:
    model = QueueModel(1, PARAMS)
    cap = np.array([100.0])
    seen = [float(model.step(np.array([120.0]), cap, 1.0)[0]) for _ in range(5)]
    assert seen == sorted(seen) and seen[-1] > seen[0]  # 20 core-s more queued every second
    assert seen[-1] == PARAMS.service_ms + 1000.0 * 100.0 / 100.0  # 100 core-s over 100 cores
    worse = QueueModel(1, PARAMS)
    for _ in range(5):
        worse.step(np.array([140.0]), cap, 1.0)
    assert worse.p95_ms[0] > model.p95_ms[0]  # further over, longer queue: how far over shows
    for _ in range(60):
        model.step(np.array([300.0]), cap, 1.0)
    assert model.p95_ms[0] == PARAMS.probe_timeout_ms  # probes time out; the queue is bounded
    for _ in range(30):
        model.step(np.array([50.0]), cap, 1.0)
    assert model.backlog[0] == 0.0 and model.p95_ms[0] < 1.01 * PARAMS.service_ms


def test_an_agent_never_reports_more_busy_cores_than_there_are() -> None:
    busy = measured_busy(np.array([50.0, 140.0, 10.0]), np.array([100.0, 100.0, 0.0]))
    assert busy.tolist() == [50.0, 100.0, 0.0]


class Recorder:
    """A strategy that only records what it is shown."""

    name = "recorder"
    interval_s = 1.0

    def __init__(self) -> None:
        self.seen: list[Observation] = []

    def step(self, obs: Observation, now: float) -> Action:
        self.seen.append(obs)
        return Action()


def test_controllers_see_capped_delayed_measurements_only_the_oracle_the_demand() -> None:
    sc = tiny(duration_s=400.0)  # A loses half its 1000 cores at 300 s with 600 of demand
    sc = sc.model_copy(
        update={"controller": sc.controller.model_copy(update={"feedback_delay_s": 2.0})}
    )
    world = build_world(sc)
    rec = Recorder()
    Engine(sc, world, rec).run()
    after = [o for o in rec.seen if o.now >= 330.0]
    a = world.pop_index("A")
    # busy cores measured 2 s ago: capped at the capacity of then (it halves at 300 s)
    assert all(o.load[a] <= o.capacity[a] for o in rec.seen if not 300.0 <= o.now <= 302.0)
    assert all(o.counters.load[a] <= 1000.0 * o.counters.at + 1e-6 for o in rec.seen)
    assert any(o.load[a] == o.capacity[a] for o in after)  # saturated, and it shows 100 %
    true_demand = [o.true_rates for o in after]  # the oracle's input still has all of it
    assert all(r.sum() > 0 for r in true_demand)
    assert all(o.now - o.counters.at == 2.0 for o in rec.seen if o.now >= 2.0)
    delta = [
        (b.counters.qos_ms[a] - o.counters.qos_ms[a]) / (b.counters.at - o.counters.at)
        for o, b in itertools.pairwise(after)
    ]
    assert max(delta) > 250.0  # the probes see the queue: the shed rule on latency can fire
