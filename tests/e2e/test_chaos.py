"""End to end: the overload scenario while every control-plane process and dependency fails in
turn (lab.chaos; module fixture, about 7 minutes; stops and restarts the local Kafka and Redis,
wiping Redis).

Kill -9 of the engine, each table writer, analytics, ingest and three forwarder syncs (an
edge's and two servers'; bench/chaos.py kills all nine), Kafka stopped for 30 s, Redis back
empty, a second engine beside the first, then the engine gone for good. Each test asserts one
promise on the run's figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import chaos
from lab.harness import Harness
from popshift.credentials import KafkaAccess, RedisAccess
from tests.e2e.conftest import require_lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.timeout(900),  # about 7 minutes in the fixture, counted in the first test
]


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, kafka: KafkaAccess, redis_access: RedisAccess
) -> Iterator[chaos.ChaosResult]:
    require_lab()
    out: Path = tmp_path_factory.mktemp("chaos")
    with Harness(out, log=lambda line: print(line, flush=True), extra_env=chaos.chaos_env()) as h:
        try:
            result = chaos.run(h, syncs=["a-edge", "a-s1", "b-s1"])
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
            h.result.save(out / "result.json")
    for f in result.faults:
        print(chaos.format_fault(f))
    print(chaos.format_lease(result.lease))
    yield result


def test_no_long_lived_connection_broke(run: chaos.ChaosResult) -> None:
    assert run.longs_total > 0
    assert run.broken_total == 0, [(f.name, f.broken) for f in run.faults]
    assert run.lease.broken == 0


def test_every_fault_was_injected(run: chaos.ChaosResult) -> None:
    names = [f.name for f in run.faults]
    for want in ("policy-engine", "table-writer-a", "table-writer-b", "table-writer-c",
                 "analytics", "ingest", "sync-a-edge", "sync-a-s1", "sync-b-s1", "Kafka",
                 "Redis", "second policy engine"):  # fmt: skip
        assert any(want in n for n in names), (want, names)


def test_every_fault_recovered_the_same_policy_tables_and_maps(run: chaos.ChaosResult) -> None:
    late = [(f.name, f.detail) for f in run.faults if f.recovery_s is None]
    assert not late
    assert run.max_recovery_s <= chaos.MAX_RECOVERY_S


def test_no_fault_changed_a_policy(run: chaos.ChaosResult) -> None:
    assert [(f.name, f.policy_changes) for f in run.faults if f.policy_changes] == []


def test_forwarding_went_on_during_every_fault(run: chaos.ChaosResult) -> None:
    stopped = [chaos.format_fault(f) for f in run.faults if not f.forwarding]
    assert not stopped


def test_no_service_exited_unless_killed(run: chaos.ChaosResult) -> None:
    assert [(f.name, f.exits) for f in run.faults if f.exits] == []


def test_new_connections_kept_being_answered(run: chaos.ChaosResult) -> None:
    for f in run.faults:
        assert f.new_total > 0, f.name
        assert f.new_failed == 0, chaos.format_fault(f)


def test_every_connection_processed_where_its_bucket_pointed(run: chaos.ChaosResult) -> None:
    assert run.placement.ok, run.placement.detail


def test_without_the_engine_every_pop_goes_local_within_the_leases(
    run: chaos.ChaosResult,
) -> None:
    assert run.lease.ok, chaos.format_lease(run.lease)
