"""End to end: the overload scenario with every service as a real process, then its checks.

One run of the overload scenario (lab.scenario; module fixture, 4 to 5 minutes): PoP a
overloaded by a burner that follows its traffic, a -> b and the cascade b -> c, long
connections opened while a forwards, load stops, cancel, drain, then a pinned share; then, on
the same lab, a load beyond what the PoPs can carry within the latency bounds
(scenario.infeasible). Each test asserts one promise on the run's record (the same record the
demo prints and plots).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import checks, scenario
from lab.harness import Harness
from lab.record import Result
from lab.settings import REPO
from popshift import metrics
from popshift.credentials import KafkaAccess, RedisAccess
from tests.e2e.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, kafka: KafkaAccess, redis_access: RedisAccess
) -> Iterator[Result]:
    require_lab()
    out: Path = tmp_path_factory.mktemp("overload")
    with Harness(out, log=lambda line: print(line, flush=True)) as h:
        try:
            result = scenario.overload(h, pin=True)
            scenario.infeasible(h)  # the variant beyond capacity, on the same lab (cheaper)
            for name, port in h.services.metrics_ports.items():
                SCRAPES[name] = metrics.scrape("127.0.0.1", port)
            operator = h.services.env() | {"POPSHIFT_PRINCIPAL": "operator"}
            for args in (["status"], ["explain", "a"]):
                done = subprocess.run(
                    [sys.executable, "-m", "popshift.cli", *args], env=operator, cwd=REPO,
                    capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                OPERATOR[args[0]] = (done.returncode, done.stdout + done.stderr)
                (out / f"popshift-{args[0]}.txt").write_text(done.stdout + done.stderr)
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
            h.result.save(out / "result.json")
    yield result


SCRAPES: dict[str, dict[str, float]] = {}
"""One scrape of every service's Prometheus endpoint at the end of the run."""
OPERATOR: dict[str, tuple[int, str]] = {}
"""`popshift status` and `popshift explain a` at the end of the run: exit code, output."""


def _check(run: Result, name: str) -> None:
    check = checks.checks(run)[name]
    print(checks.format_checks([check]))
    assert check.ok, f"{check.name}: {check.detail}"


def test_zero_failed_long_lived_connections(run: Result) -> None:
    _check(run, "long_connections")


def test_a_was_flagged_and_forwarded_to_b_with_a_cascade_to_c(run: Result) -> None:
    assert any(s.pop == "a" and s.state == "shed" for s in run.statuses)
    assert any(p.source == "a" and "b" in p.shares for p in run.policies)
    assert any(p.source == "b" and "c" in p.shares for p in run.policies), [
        (p.t, p.source, p.shares) for p in run.policies
    ]
    assert not any(p.source == "a" and "c" in p.shares for p in run.policies)  # too far


def test_share_processed_in_b_follows_the_policy(run: Result) -> None:
    """+-3 points of the engine's share, over >= 3000 connections (3 binomial sd)."""
    _check(run, "engine_share")


def test_pinned_share_is_met_within_three_points(run: Result) -> None:
    _check(run, "pinned_share")


def test_every_connection_is_processed_where_its_bucket_points(run: Result) -> None:
    """Deterministic: the forwarder's hash of each connection's 5-tuple and the table in force
    say which PoP must process it; every one did (except in flight across a table change)."""
    _check(run, "placement")


def test_direct_server_return(run: Result) -> None:
    _check(run, "dsr")


def test_one_inter_pop_hop_at_most(run: Result) -> None:
    _check(run, "one_hop")


def test_after_the_cancel_a_processes_its_own_and_b_keeps_its_connections(run: Result) -> None:
    _check(run, "after_cancel_local")
    _check(run, "after_cancel_longs")


def test_every_pop_is_below_its_shed_threshold_within_20_s(run: Result) -> None:
    """The outcome: the overload gone, not only the mechanism."""
    check = checks.checks(run)["relief"]
    print(checks.format_checks([check]))
    assert check.ok, f"{check.name}: {check.detail}"


def test_beyond_capacity_the_engine_reports_its_policy_as_least_bad(run: Result) -> None:
    _check(run, "infeasible")


def _sum(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def test_every_service_serves_its_metrics(run: Result) -> None:
    """Each process of the run answered a scrape with the figures of its own work."""
    assert run.policies
    kinds = {name.split("-")[0] for name in SCRAPES}
    assert {"ingest", "analytics", "policy", "table", "sync", "agent", "console"} <= kinds, sorted(
        SCRAPES
    )
    for name, samples in SCRAPES.items():
        if name.startswith("agent-"):
            assert _sum(samples, 'popshift_messages_produced_total{topic="') > 0, name
        elif name == "ingest":
            assert _sum(samples, "popshift_messages_consumed_total{") > 0
            assert _sum(samples, "popshift_consumer_group_steady{") == 1.0
            assert any(k.startswith("popshift_consumer_lag_messages{") for k in samples)
        elif name == "analytics":
            assert _sum(samples, "popshift_messages_consumed_total{") > 0
            assert _sum(samples, "popshift_messages_produced_total{") > 0
        elif name == "policy-engine":
            assert samples["popshift_engine_round_seconds_count"] > 0
            assert _sum(samples, "popshift_policy_events_total{") > 0
        elif name.startswith("table-writer-"):
            assert samples["popshift_table_apply_seconds_count"] > 0, name
            assert samples["popshift_redis_connected"] == 1.0, name
        elif name.startswith("sync-"):
            assert _sum(samples, "popshift_dataplane_packets{") > 0, name
            assert samples["popshift_redis_connected"] == 1.0, name
        elif name == "console":  # it follows five topics into the page
            assert _sum(samples, "popshift_messages_consumed_total{") > 0


def test_popshift_status_and_explain_read_the_runs_topics(run: Result) -> None:
    code, text = OPERATOR["status"]
    assert code == 0, text
    rows = {line.split()[0]: line for line in text.splitlines() if line[:2] in ("a ", "b ", "c ")}
    assert set(rows) == {"a", "b", "c"}, text
    for line in rows.values():  # a fresh verdict and a table version for every PoP
        assert any(w in line for w in ("shed", "neutral", "can_take")), line
        assert "t0:v" in line, line
    assert "CONSUMER GROUP LAG" in text and "messages" in text, text
    code, text = OPERATOR["explain"]
    assert code == 0, text
    assert text.startswith("a: target 75%") and "analytics:" in text, text
    assert ("binds:" in text) or ("policy: none in force" in text), text
