"""End to end: the overload scenario with every service as a real process, then its checks.

One run of `deploy/lab/scenario.py overload` (module fixture, about 3 minutes): PoP a overloaded
by a burner that follows its traffic, a -> b and the cascade b -> c, long connections opened
while a forwards, load stops, cancel, drain, then a pinned share. Each test asserts one promise
on the run's record (the same record the demo prints and plots).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, redis_url: str
) -> Iterator[object]:
    require_lab()
    import scenario

    out: Path = tmp_path_factory.mktemp("overload")
    with scenario.Harness(out, log=lambda line: print(line, flush=True)) as h:
        try:
            result = scenario.overload(h, pin=True, overload_s=40.0)
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
            h.result.save(out / "result.json")
    yield result


def _check(check: object) -> None:
    from scenario_report import Check

    assert isinstance(check, Check)
    assert check.ok, f"{check.name}: {check.detail}"


def test_zero_failed_long_lived_connections(run: object) -> None:
    import scenario_report as rep

    _check(rep.check_long_connections(run))  # type: ignore[arg-type]


def test_a_was_flagged_and_forwarded_to_b_with_a_cascade_to_c(run: object) -> None:
    import scenario_report as rep

    assert isinstance(run, rep.Result)
    assert any(s.pop == "a" and s.state == "shed" for s in run.statuses)
    assert any(p.source == "a" and "b" in p.shares for p in run.policies)
    assert any(p.source == "b" and "c" in p.shares for p in run.policies), [
        (p.t, p.source, p.shares) for p in run.policies
    ]
    assert not any(p.source == "a" and "c" in p.shares for p in run.policies)  # too far


def test_share_processed_in_b_follows_the_policy(run: object) -> None:
    import scenario_report as rep

    assert isinstance(run, rep.Result)
    t0, t1, shares = rep.steady_window(
        run, "a", run.marks["load_on"], run.marks["load_off"], settle_s=3.0
    )
    assert t1 - t0 >= 8.0, f"no steady policy long enough: {t0:.1f}..{t1:.1f}"
    _check(rep.check_share(run, "a", "b", t0, t1, shares.get("b", 0.0), label="engine"))


def test_pinned_share_is_met_within_three_points(run: object) -> None:
    import scenario_report as rep

    assert isinstance(run, rep.Result)
    t0, t1 = run.marks["pin_steady"] + 1.0, run.marks["pin_off"]
    _check(rep.check_share(run, "a", "b", t0, t1, 0.25, label="pinned"))


def test_direct_server_return(run: object) -> None:
    import scenario_report as rep

    _check(rep.check_dsr(run))  # type: ignore[arg-type]


def test_one_inter_pop_hop_at_most(run: object) -> None:
    import scenario_report as rep

    _check(rep.check_one_hop(run))  # type: ignore[arg-type]


def test_after_the_cancel_a_processes_its_own_and_b_keeps_its_connections(run: object) -> None:
    import scenario_report as rep

    assert isinstance(run, rep.Result)
    t0 = run.marks["cancel"] + 2.0
    for check in rep.check_after_cancel(run, t0, run.marks["late_longs_off"]):
        _check(check)
