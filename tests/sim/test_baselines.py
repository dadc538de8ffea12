"""Each baseline on the three-PoP world, checked by hand.

A (600 cores of demand), B and C (400 each) have 1000 cores; at 300 s A loses half its servers
(util 0.6 -> 1.2). B is A's next-nearest PoP (330 km; C is 480 km away).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine import Engine
from sim.strategies import make_strategy
from sim.world import build_world
from tests.sim.worlds import tiny

A, B, C = 0, 1, 2
# Region A's connections at steady state: cores x share / cost per tier (+ < 3 % tick effect).
A_CONNECTIONS = 600 * (0.6 / 0.01 + 0.3 / 0.002 + 0.1 / 0.005)


def run(strategy: str, duration: float, **overrides: object) -> Engine:
    sc = tiny(duration_s=duration, **overrides)
    world = build_world(sc)
    engine = Engine(sc, world, make_strategy(strategy, world, sc))
    engine.result = engine.run()  # type: ignore[attr-defined]
    return engine


def test_none_leaves_a_overloaded_from_the_event_to_the_end() -> None:
    e = run("none", 900.0)
    s = e.result.summary  # type: ignore[attr-defined]
    assert s["overload_pop_s"] == pytest.approx(600.0, abs=1.0)
    assert s["peak_util"] == pytest.approx(1.2, rel=0.03)
    assert s["forwarded"] == 0.0 and s["broken"] == 0.0


def test_bgp_withdrawal_waits_for_propagation_then_breaks_and_moves_to_the_next_nearest() -> None:
    early = run("bgp", 359.0)  # withdrawn at 300 s; propagation takes 60-120 s
    assert early.withdrawn == {(0, A)}
    assert early.result.summary["broken"] == 0.0  # type: ignore[attr-defined]
    assert early.catchment[0] == A
    late = run("bgp", 421.0)
    assert late.catchment[0] == B  # the next-nearest, whatever its load
    broken = late.result.summary["broken"]  # type: ignore[attr-defined]
    assert broken == pytest.approx(A_CONNECTIONS, rel=0.03)
    # B now takes A's new connections and its own: 1000 cores of demand on 1000.
    assert list(late.catchment) == [B, B, C]


def test_dns_steers_a_resolver_over_one_ttl_and_breaks_nothing() -> None:
    world = {**tiny().world.model_dump(), "capacities": [1000.0, 2000.0, 2000.0]}
    e = run("dns", 451.0, world=world)
    assert e.dns_target[0] == B
    assert e._dns_frac(450.0)[0] == pytest.approx(0.5)  # TTL 300 s from 300 s
    assert e.result.summary["broken"] == 0.0  # type: ignore[attr-defined]
    assert e.cohorts.direct[:, 2].sum() == 0.0  # the realtime tier is not steerable
    assert e.cohorts.direct[B, 0] > 0.0


def test_dns_does_not_steer_a_resolver_no_pop_can_take_whole() -> None:
    e = run("dns", 600.0)  # A's 600 cores vs B's and C's 200 cores of room below 0.6
    assert (e.dns_target < 0).all()


def test_threshold_pairs_with_the_nearest_light_pop_and_steps_up() -> None:
    e = run("threshold", 311.0)  # rounds at 300 s and 310 s
    assert e.cohorts.shares() == {(A, 0, B): pytest.approx(0.2), (A, 1, B): pytest.approx(0.2)}


def test_oracle_moves_the_exact_excess_of_the_lowest_tier_to_the_nearest() -> None:
    e = run("oracle", 302.0)
    # Target 0.75 x 500 = 375 cores; tier 0 (360 cores native) moves first: 225 / 360.
    assert e.cohorts.shares() == {(A, 0, B): pytest.approx(0.625, rel=1e-6)}


@pytest.mark.parametrize("strategy", ["none", "bgp", "dns", "threshold", "popshift", "oracle"])
def test_every_connection_is_accounted_for(strategy: str) -> None:
    e = run(strategy, 900.0)
    r = e.result  # type: ignore[attr-defined]
    assert r.conservation_error < 1e-9
    led, active = e.cohorts.ledger, e.cohorts.active()
    assert np.allclose(led.arrived, led.done + led.broken + led.lost + active, rtol=1e-9)
    s = r.summary
    assert s["served"] + s["forwarded"] == pytest.approx(s["arrived"])
    assert s["done"] + s["broken"] + s["lost_to_failure"] + s["active_end"] == pytest.approx(
        s["arrived"]
    )
