"""Demand keeps exp(noise) between noise blocks: the rates are the formula's, however queried."""

from __future__ import annotations

import numpy as np

from sim.demand import DIURNAL, NOISE_BLOCK_S, Demand, crowd_factor, diurnal
from sim.world import build_world, local_hour
from tests.sim.worlds import small_failure


def test_rates_are_the_formula_at_every_tick_and_when_blocks_are_skipped() -> None:
    sc = small_failure(duration_s=600.0)
    world = build_world(sc)
    every, sparse = Demand(world, sc), Demand(world, sc)
    changed = 0
    previous = None
    for now in np.arange(0.0, 8 * NOISE_BLOCK_S, 1.0):
        got = every.rates(float(now))
        m = np.exp(every._noise) * diurnal(
            local_hour(sc.start_utc_h + now / 3600.0, world.region_lon)
        )
        for e, inside in every._crowds:
            m = np.where(inside, m * crowd_factor(e, float(now)), m)
        assert np.array_equal(got, np.outer(every._peak * m, every._per_tier))
        if previous is not None and not np.array_equal(got, previous):
            changed += 1
        previous = got
        if now % (2.5 * NOISE_BLOCK_S) == 0.0:  # skips whole blocks between its queries
            assert np.array_equal(sparse.rates(float(now)), got)
    assert changed > 100, "the diurnal curve moves the rates every tick"


def test_a_caller_scaling_the_multiplier_does_not_change_the_next_one() -> None:
    sc = small_failure(duration_s=600.0)
    world = build_world(sc)
    demand = Demand(world, sc.model_copy(update={"diurnal": False}))  # m is exp(noise) alone
    first = demand.multiplier(10.0)
    want = first.copy()
    first *= 3.0
    assert np.array_equal(demand.multiplier(10.0), want)


def test_the_wrapped_diurnal_curve_is_numpys_periodic_interpolation() -> None:
    rng = np.random.default_rng(3)
    lon = rng.uniform(-180.0, 180.0, 1_000)
    at = [local_hour(utc_h, lon) for utc_h in rng.uniform(0.0, 48.0, 20)]
    hours = np.concatenate([*at, [0.0, 23.5, 24.0, -1e-17 % 24.0]])
    want = np.interp(hours, np.arange(24.0), DIURNAL, period=24.0)
    assert np.array_equal(diurnal(hours), want)
