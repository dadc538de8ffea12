"""Client demand: population x a diurnal curve by local time x noise x flash crowds.

Deterministic for a seed and independent of the strategy: every strategy of a scenario sees the
very same arrivals, so differences in the metrics come from the strategies alone.
"""

from __future__ import annotations

import numpy as np

from sim.scenario import FlashCrowd, Scenario
from sim.world import FloatArray, World, great_circle_km

DIURNAL = np.array(
    [
        0.62,
        0.48,
        0.38,
        0.31,
        0.28,
        0.28,
        0.32,
        0.42,
        0.55,
        0.63,
        0.68,
        0.71,
        0.73,
        0.74,
        0.75,
        0.76,
        0.78,
        0.82,
        0.88,
        0.95,
        1.00,
        0.99,
        0.90,
        0.76,
    ]
)
"""Relative demand by local hour (peak 1.0 at 20-21 h, trough ~0.28 at 4-5 h): the usual shape
of eyeball-network traffic, as in public IXP daily graphs."""

NOISE_BLOCK_S = 60.0
NOISE_RHO = 0.9


_HOURS = np.arange(-1.0, 25.0)
_WRAPPED = np.concatenate([DIURNAL[-1:], DIURNAL, DIURNAL[:1]])
"""The curve wrapped one hour either side, as ``np.interp(..., period=24)`` wraps it on every
call (sorting and copying it: more than half the cost of a tick's demand)."""


def diurnal(hour: FloatArray) -> FloatArray:
    """The curve at local hours in [0, 24] (``local_hour``'s: not taken mod 24 once more)."""
    return np.asarray(np.interp(hour, _HOURS, _WRAPPED))


class Demand:
    """New-connection arrival rates (per second) per region and tier at a given time."""

    def __init__(self, world: World, scenario: Scenario) -> None:
        self._world = world
        self._start_h = scenario.start_utc_h
        self._diurnal = scenario.diurnal
        tiers = world.tiers
        # Cores per region at peak -> connections per second per tier: cores / (cost x lifetime).
        self._per_tier = np.array(
            [t.demand_share / (t.cores_per_connection * t.mean_lifetime_s) for t in tiers]
        )
        self._peak = world.region_weight * scenario.world.total_peak_cores
        self._sigma = scenario.world.noise_sigma
        self._rng = np.random.default_rng([scenario.seed, 0xD3A4D])
        self._noise = np.zeros(world.n_regions)
        self._exp_noise = np.ones(world.n_regions)
        """exp(_noise), kept: the noise changes once a block, the multiplier every tick."""
        self._block = -1
        self._lon_h = world.region_lon / 15.0  # local_hour's offsets, divided once
        self._crowds = [
            (
                e,
                great_circle_km(e.center[0], e.center[1], world.region_lat, world.region_lon)
                <= e.radius_km,
            )
            for e in scenario.events
            if isinstance(e, FlashCrowd)
        ]

    def _advance_noise(self, now: float) -> None:
        block = int(now // NOISE_BLOCK_S)
        if self._block >= block:
            return
        innovation = self._sigma * np.sqrt(1.0 - NOISE_RHO**2)
        while self._block < block:
            self._noise = NOISE_RHO * self._noise + innovation * self._rng.standard_normal(
                self._noise.size
            )
            self._block += 1
        self._exp_noise = np.exp(self._noise)

    def multiplier(self, now: float) -> FloatArray:
        """Diurnal x noise x flash crowds, per region."""
        self._advance_noise(now)
        if self._diurnal:  # a new array, never the cache itself: a caller may scale what it gets
            hour = np.mod(self._start_h + now / 3600.0 + self._lon_h, 24.0)  # local_hour's
            m = self._exp_noise * diurnal(hour)
        else:
            m = self._exp_noise.copy()
        for e, inside in self._crowds:
            f = crowd_factor(e, now)
            if f != 1.0:
                m = np.where(inside, m * f, m)
        return m

    def rates(self, now: float) -> FloatArray:
        """(regions, tiers) new connections per second."""
        return np.outer(self._peak * self.multiplier(now), self._per_tier)


def crowd_factor(e: FlashCrowd, now: float) -> float:
    """1 outside the event, ramping linearly to ``factor`` and back down."""
    t = now - e.at_s
    if t <= 0.0 or t >= e.duration_s + e.ramp_s:
        return 1.0
    up = 1.0 if e.ramp_s == 0.0 else min(1.0, t / e.ramp_s)
    down = 1.0 if t <= e.duration_s else max(0.0, 1.0 - (t - e.duration_s) / e.ramp_s)
    return 1.0 + (e.factor - 1.0) * min(up, down)
