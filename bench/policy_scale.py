"""Policy solve time against PoP count, exact (HiGHS) and greedy, with the greedy's objective gap.

PoPs are scattered deterministically (seeded) around a fixed list of metro areas on land; the
added latency of forwarding A->B is the great-circle distance at 100 km per ms (fibre at
~200 km/ms with a path-inflation factor of 2). Three tiers as in deploy/config/network.yaml:
bulk (30 ms bound), standard (15 ms), premium (not forwardable). About 15 % of PoPs are over
their target, the rest between 30 % and 70 % utilisation.

    python bench/policy_scale.py [--sizes 30,300,1000,3000] [--repeat 3]

The last line is ``policy_solve_ms_300: N`` (exact solver, median of the repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.policy_engine.solver import (
    PopSpec,
    Problem,
    Solution,
    TierSpec,
    build_graph,
    solve,
    solve_greedy,
)

METROS = [  # (lat, lon) of metro areas PoPs cluster around
    (52.37, 4.90),
    (51.51, -0.13),
    (50.11, 8.68),
    (48.86, 2.35),
    (40.42, -3.70),
    (45.46, 9.19),
    (59.33, 18.07),
    (52.23, 21.01),
    (41.01, 28.98),
    (55.76, 37.62),
    (40.71, -74.01),
    (41.88, -87.63),
    (37.77, -122.42),
    (34.05, -118.24),
    (47.61, -122.33),
    (32.78, -96.80),
    (25.76, -80.19),
    (43.65, -79.38),
    (19.43, -99.13),
    (-23.55, -46.63),
    (-34.60, -58.38),
    (4.71, -74.07),
    (-12.05, -77.04),
    (35.68, 139.69),
    (37.57, 126.98),
    (22.32, 114.17),
    (1.35, 103.82),
    (13.76, 100.50),
    (19.08, 72.88),
    (28.61, 77.21),
    (25.20, 55.27),
    (-33.87, 151.21),
    (-37.81, 144.96),
    (-26.20, 28.05),
    (30.04, 31.24),
    (6.52, 3.38),
    (-1.29, 36.82),
    (31.23, 121.47),
    (39.90, 116.41),
    (-6.21, 106.85),
]
TIERS = [
    TierSpec(id=0, forwardable=True, max_added_latency_ms=30.0, priority=0),
    TierSpec(id=1, forwardable=True, max_added_latency_ms=15.0, priority=1),
    TierSpec(id=2, forwardable=False, max_added_latency_ms=0.0, priority=2),
]
TIER_MIX = (0.5, 0.3, 0.2)
EARTH_KM = 6371.0
KM_PER_MS = 100.0


def pop_coordinates(n: int, seed: int = 7) -> np.ndarray:
    """n (lat, lon) points in degrees, each within a few hundred km of a metro area."""
    rng = np.random.default_rng(seed)
    metros = np.array(METROS)
    centre = metros[rng.integers(0, len(metros), n)]
    spread = rng.normal(0.0, 3.0, size=(n, 2))
    lat = np.clip(centre[:, 0] + spread[:, 0], -60.0, 70.0)
    lon = (centre[:, 1] + spread[:, 1] + 180.0) % 360.0 - 180.0
    return np.column_stack([lat, lon])


def great_circle_ms(coords: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(coords[:, 0]), np.radians(coords[:, 1])
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    a = np.sin(dlat / 2) ** 2 + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.sin(dlon / 2) ** 2
    km = 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return np.asarray(km / KM_PER_MS)


def make_problem(n: int, seed: int = 7) -> Problem:
    rng = np.random.default_rng(seed + n)
    capacity = rng.uniform(20.0, 200.0, n)
    util = np.where(rng.random(n) < 0.15, rng.uniform(0.8, 1.2, n), rng.uniform(0.3, 0.7, n))
    pops = [
        PopSpec(
            name=f"pop{i}",
            capacity=float(capacity[i]),
            target_utilisation=0.75,
            native={
                t.id: float(capacity[i] * util[i] * share)
                for t, share in zip(TIERS, TIER_MIX, strict=True)
            },
        )
        for i in range(n)
    ]
    return Problem(pops=pops, tiers=TIERS, latency_ms=great_circle_ms(pop_coordinates(n, seed)))


T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    times: list[float] = []
    result = fn()  # warm-up; its time is not counted
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30,300,1000,3000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"{'pops':>6} {'shedders':>8} {'arcs':>7} {'graph_ms':>9} {'exact_ms':>9} "
        f"{'greedy_ms':>9} {'gap_%':>7} {'overload_exact':>14} {'overload_greedy':>15}"
    )
    exact_ms: dict[int, float] = {}
    for n in sizes:
        problem = make_problem(n)
        graph_ms, graph = timed(partial(build_graph, problem), args.repeat)
        e_ms, exact = timed(partial(solve, problem), args.repeat)
        g_ms, greedy = timed(partial(solve_greedy, problem), args.repeat)
        exact_ms[n] = e_ms
        gap = 100.0 * (greedy.objective - exact.objective) / max(exact.objective, 1e-9)
        shedders = sum(p.native_load > p.capacity * p.target_utilisation for p in problem.pops)

        def overload(sol: Solution, problem: Problem = problem) -> float:
            return sum(
                max(0.0, sol.load[p.name] - p.capacity * p.target_utilisation) for p in problem.pops
            )

        print(
            f"{n:>6} {shedders:>8} {graph.size:>7} {graph_ms:>9.1f} {e_ms:>9.1f} {g_ms:>9.1f} "
            f"{gap:>7.2f} {overload(exact):>14.2f} {overload(greedy):>15.2f}"
        )
    if 300 in exact_ms:
        print(f"policy_solve_ms_300: {exact_ms[300]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
