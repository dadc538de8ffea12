"""``popshift simulate --scenario FILE [--out DIR] [--seed N]``: every strategy, one table.

Runs each strategy of the scenario on the same world, seed and events, shows a progress bar,
prints the table, popshift's ``changes_per_hour`` and ``oscillations``, ``overload_vs_oracle``
and, last, ``overload_removed_vs_oracle: Q``, and writes CSV, PNG and a
markdown report to the output folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.engine import RunResult, run_strategy
from sim.recording import ConsoleRecording
from sim.report import (
    overload_removed_vs_oracle,
    overload_vs_oracle,
    table,
    write_csv,
    write_markdown,
    write_plots,
)
from sim.scenario import STRATEGY_NAMES, load_scenario
from sim.strategies import make_strategy
from sim.strategies.base import Strategy
from sim.strategies.popshift import PopshiftStrategy
from sim.world import build_world, describe


def _progress_bar(total: float) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # optional: plain lines instead of a bar
        return None
    return tqdm(total=round(total), unit="sim-s", unit_scale=True, file=sys.stderr, leave=False)


def _recording(path: Path | None, strategy: Strategy) -> ConsoleRecording | None:
    """popshift's statuses and policies into ``path`` (sim/recording.py), if asked for."""
    if path is None or not isinstance(strategy, PopshiftStrategy):
        return None
    strategy.recording = ConsoleRecording(path, strategy.network)
    return strategy.recording


def simulate_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="popshift simulate", description=__doc__)
    parser.add_argument("--scenario", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: out/<scenario name>")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--strategies", default=None, help=f"comma separated subset of {','.join(STRATEGY_NAMES)}"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--duration-s", type=float, default=None, help="overrides the scenario's")
    parser.add_argument(
        "--console-record",
        type=Path,
        default=None,
        help="write popshift's statuses and policies here for `popshift console --replay`",
    )
    args = parser.parse_args(argv)

    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.model_copy(update={"seed": args.seed})
    if args.duration_s is not None:
        scenario = scenario.model_copy(update={"duration_s": args.duration_s})
    names = args.strategies.split(",") if args.strategies else list(scenario.strategies)
    unknown = set(names) - set(STRATEGY_NAMES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}")
    out = args.out or Path("out") / scenario.name
    out.mkdir(parents=True, exist_ok=True)

    world = build_world(scenario)
    print(f"{scenario.name}: {describe(world)}; seed {scenario.seed}", flush=True)
    bar = _progress_bar(scenario.duration_s * len(names))
    results: list[RunResult] = []
    for name in names:
        if bar is not None:
            bar.set_description(name)
        started = time.perf_counter()
        strategy = make_strategy(name, world, scenario)
        recording = _recording(args.console_record, strategy)
        try:
            result = run_strategy(scenario, world, strategy, bar.update if bar else None)
        finally:
            if recording is not None:
                recording.close()
                print(f"console recording: {args.console_record} ({recording.lines} lines)")
        result.extra["wall_s"] = time.perf_counter() - started
        results.append(result)
        if bar is None:
            print(f"  {name}: {result.extra['wall_s']:.1f} s", file=sys.stderr, flush=True)
    if bar is not None:
        bar.close()

    write_csv(results, world, out)
    plots = [] if args.no_plots else write_plots(results, world, out)
    write_markdown(scenario, world, results, out, plots)
    print(table(results))
    for r in results:
        if r.conservation_error > 1e-9:
            print(f"WARNING: {r.strategy} conservation error {r.conservation_error:.2e}")
    print(f"output: {out}/ (summary.csv, utilisation_over_time.csv, report.md, plots)")
    for r in results:
        if r.strategy == "popshift":
            print(f"changes_per_hour: {r.summary['policy_changes_per_h']:.1f}")
            print(f"oscillations: {r.summary['oscillations']:.0f}")
    print(f"overload_vs_oracle: {overload_vs_oracle(results):.3f}")
    print(f"overload_removed_vs_oracle: {overload_removed_vs_oracle(results):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(simulate_main(sys.argv[1:]))
