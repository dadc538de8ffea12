"""Small hand-checkable worlds for the simulator's tests."""

from __future__ import annotations

from typing import Any

from sim.scenario import Scenario

# Three PoPs, one client region each, where the PoP is. A-B 330 km, A-C 480 km, B-C 470 km.
CITIES = [
    ["A", 50.0, 8.0, 600.0, "DE"],
    ["B", 52.0, 4.0, 400.0, "NL"],
    ["C", 48.0, 2.0, 400.0, "FR"],
]
TIERS = [
    {
        "id": 0,
        "name": "bulk",
        "max_added_latency_ms": 60,
        "priority": 0,
        "mean_lifetime_s": 60,
        "cores_per_connection": 0.01,
        "demand_share": 0.6,
    },
    {
        "id": 1,
        "name": "web",
        "max_added_latency_ms": 25,
        "priority": 1,
        "mean_lifetime_s": 20,
        "cores_per_connection": 0.002,
        "demand_share": 0.3,
    },
    {
        "id": 2,
        "name": "realtime",
        "forwardable": False,
        "max_added_latency_ms": 0,
        "priority": 2,
        "mean_lifetime_s": 30,
        "cores_per_connection": 0.005,
        "demand_share": 0.1,
    },
]


def tiny(**overrides: Any) -> Scenario:
    """A 600 / B 400 / C 400 cores of flat demand on 1000 cores each; A loses half at 300 s."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "duration_s": 900.0,
        "diurnal": False,
        "world": {
            "pops": 3,
            "regions": 3,
            "cities": CITIES,
            "capacities": [1000.0, 1000.0, 1000.0],
            "total_peak_cores": 1400.0,
            "noise_sigma": 0.0,
        },
        "tiers": TIERS,
        "events": [{"kind": "half_servers", "pop": "A", "at_s": 300.0}],
        "controller": {"table_bits": 10},
    }
    spec.update(overrides)
    return Scenario.model_validate(spec)


EUROPE = [
    ["London", 51.51, -0.13, 9.0e6, "GB"],
    ["Paris", 48.86, 2.35, 11.0e6, "FR"],
    ["Frankfurt", 50.11, 8.68, 5.0e6, "DE"],
    ["Amsterdam", 52.37, 4.90, 4.0e6, "NL"],
    ["Madrid", 40.42, -3.70, 6.5e6, "ES"],
    ["Milan", 45.46, 9.19, 4.5e6, "IT"],
    ["Stockholm", 59.33, 18.07, 2.0e6, "SE"],
    ["Warsaw", 52.23, 21.01, 3.0e6, "PL"],
    ["Vienna", 48.21, 16.37, 2.5e6, "AT"],
    ["Dublin", 53.35, -6.26, 1.5e6, "IE"],
    ["Manchester", 53.48, -2.24, 2.7e6, "GB"],
    ["Lyon", 45.76, 4.84, 2.2e6, "FR"],
    ["Brussels", 50.85, 4.35, 2.1e6, "BE"],
    ["Turin", 45.07, 7.69, 1.7e6, "IT"],
    ["Bologna", 44.49, 11.34, 1.0e6, "IT"],
    ["Hamburg", 53.55, 9.99, 1.8e6, "DE"],
]


def small_failure(**overrides: Any) -> Scenario:
    """10 European PoPs, 16 client cities, an evening hour: half servers, dark, flash crowd."""
    spec: dict[str, Any] = {
        "name": "small-failure",
        "seed": 5,
        "start_utc_h": 18.5,
        "duration_s": 3000.0,
        "world": {"pops": 10, "regions": 16, "cities": EUROPE, "total_peak_cores": 20000.0},
        "tiers": TIERS,
        "events": [
            {"kind": "half_servers", "pop": "London", "at_s": 300.0},
            {"kind": "dark", "pop": "Paris", "at_s": 1000.0},
            {
                "kind": "flash_crowd",
                "center": [45.46, 9.19],
                "radius_km": 300.0,
                "factor": 2.5,
                "at_s": 1800.0,
                "ramp_s": 120.0,
                "duration_s": 900.0,
            },
        ],
        "controller": {"table_bits": 10},
    }
    spec.update(overrides)
    return Scenario.model_validate(spec)
