"""How fast the simulator runs a day of 300 PoPs at 1 s ticks.

Runs scenarios/day-300.yaml (24 h, 300 PoPs, 3 tiers, 1 s ticks) with ``none`` (the world alone:
demand, anycast, cohorts, metrics) and with ``popshift`` (the same plus the real analytics rules,
policy engine and table writers every controller round), prints simulated seconds per wall second
and where popshift's time goes, and last ``sim_24h_wall_s: N`` for the popshift run.

``--hours H`` runs H hours and scales the last line to 24 h (says so); the default is the full day.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sim.engine import run_strategy  # noqa: E402
from sim.scenario import load_scenario  # noqa: E402
from sim.strategies import make_strategy  # noqa: E402
from sim.world import build_world, describe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", type=Path, default=REPO / "scenarios" / "day-300.yaml")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--strategies", default="none,popshift")
    args = parser.parse_args()

    sc = load_scenario(args.scenario)
    sc = sc.model_copy(update={"duration_s": args.hours * 3600.0})
    started = time.perf_counter()
    world = build_world(sc)
    print(f"world: {describe(world)} (built in {time.perf_counter() - started:.1f} s)")
    ctl = sc.controller
    print(
        f"clock: {args.hours:g} h at {sc.tick_s:g} s ticks; controller rounds every "
        f"{ctl.analytics_interval_s:g} s; tables 2^{ctl.table_bits} buckets"
    )
    wall = 0.0
    for name in args.strategies.split(","):
        strategy = make_strategy(name, world, sc)
        started = time.perf_counter()
        result = run_strategy(sc, world, strategy)
        wall = time.perf_counter() - started
        rate = sc.duration_s / wall
        print(
            f"{name}: {wall:.1f} s wall, {rate:,.0f} simulated s per wall s, "
            f"overload {result.summary['overload_pop_s']:.0f} PoP-s"
        )
        parts = getattr(strategy, "wall_s", None)
        if parts:
            rounds = sc.duration_s / strategy.interval_s
            print(
                "  in services: "
                + ", ".join(
                    f"{k} {v:.1f} s ({v / rounds * 1e3:.1f} ms/round)" for k, v in parts.items()
                )
                + f"; world {wall - sum(parts.values()):.1f} s"
            )
    scaled = wall * 24.0 / args.hours
    if args.hours != 24.0:
        print(f"(last strategy scaled from {args.hours:g} h to 24 h)")
    print(f"sim_24h_wall_s: {scaled:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
