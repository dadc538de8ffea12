"""Against the real Redis and Kafka: the versioned store, then pop-status in -> policy -> table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from popshift import redis_client, topics
from popshift.bus import KafkaBus, TypedProducer, create_topics
from popshift.credentials import KafkaAccess, RedisAccess
from popshift.network import load_network
from popshift.replay import read_all
from schemas.messages import (
    PolicyAction,
    PolicyEvent,
    PopLoad,
    PopState,
    PopStatus,
    ServerLoad,
    TableUpdate,
)
from services.policy_engine.service import PolicyEngineService
from services.policy_engine.settings import PolicySettings
from services.table_writer.codec import Header
from services.table_writer.service import TableWriterService
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import StaleVersion, TableStore, current_key, version_key
from services.table_writer.table import Peer, Server, apply_policy, forwarded_counts, new_table
from tests.conftest import server_address

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")


def read(store: Any, pop: str, tier: int, version: int | None = None) -> tuple[Any, Any]:
    """The stored table, which the test has just written (so it must be there)."""
    got = store.read(pop, tier) if version is None else store.read(pop, tier, version=version)
    assert got is not None, f"no table for {pop}/{tier}"
    return got


@pytest.fixture
def client(redis_access: RedisAccess, unique: str) -> Iterator[redis.Redis]:
    c = redis_client.connect(redis_access)
    yield c
    for key in c.scan_iter(f"{unique}:*"):
        c.delete(key)
    c.close()


@pytest.mark.redis
def test_store_flips_versions_atomically_and_keeps_the_old_one_briefly(
    client: redis.Redis, unique: str
) -> None:
    prefix = f"{unique}:table"
    store = TableStore(client, retain_s=30.0, prefix=prefix)
    peers = {"b": Peer("b", 2, "10.100.2.1")}
    t1 = new_table([Server("192.0.2.1", 4.0), Server("2001:db8::2", 4.0)], 16, 1.0)
    t2 = apply_policy(t1, {"b": 0.2}, peers, 2.0, 60.0)
    assert store.read("a", 0) is None
    store.write(t1, Header("a", 0, 1, 0, 16, 1.0))
    store.write(t2, Header("a", 0, 2, 5, 16, 2.0, {"b": 0.2}))
    assert client.get(current_key("a", 0, prefix)) == b"2"
    assert client.ttl(version_key("a", 0, 2, prefix)) == -1  # current: no expiry
    assert 0 < client.pttl(version_key("a", 0, 1, prefix)) <= 30_000  # old: retained briefly
    header, table = read(store, "a", 0)
    assert header.version == 2 and header.policy_version == 5 and table == t2
    assert read(store, "a", 0, version=1)[1] == t1
    with pytest.raises(StaleVersion):
        store.write(t1, Header("a", 0, 2, 5, 16, 3.0))
    assert read(store, "a", 0)[1] == t2  # the refused write changed nothing readers see


def statuses(now: float) -> list[PopStatus]:
    out = []
    for pop, load in {"a": 9.0, "b": 7.5, "c": 2.0}.items():
        out.append(
            PopStatus(
                pop=pop,
                at=now,
                state=PopState.SHED if load > 7.5 else PopState.CAN_TAKE,
                since=now,
                utilisation=load / 10.0,
                capacity_cores=10.0,
                load_cores=load,
                rule="combined_over" if load > 7.5 else None,
            )
        )
    return out


def pop_load(pop: str, now: float) -> PopLoad:
    servers = [
        ServerLoad(
            server=f"{pop}-s{i}",
            address=server_address(pop, i),
            capacity_cores=5.0,
            utilisation=0.5,
        )
        for i in (1, 2)
    ]
    return PopLoad(
        pop=pop, at=now, servers=servers, healthy_capacity_cores=10.0, combined_load_cores=5.0
    )


@pytest.mark.kafka
@pytest.mark.redis
def test_pop_status_in_policy_out_tables_in_redis(
    kafka: KafkaAccess, client: redis.Redis, unique: str
) -> None:
    common: dict[str, Any] = {
        "topic_prefix": unique,
        "kafka_bootstrap": kafka.bootstrap,
        "topic_partitions": 1,
    }
    ps = PolicySettings(
        **common,
        policy_group=f"{unique}-pe",
        policy_holdoff_s=0.0,
        policy_max_step=1.0,
        policy_deadband=0.0,
        policy_tier_mix={0: 1.0},
    )
    ts = TableWriterSettings(
        **common,
        table_key_prefix=f"{unique}:table",
        table_group_prefix=f"{unique}-tw",
        table_bits=16,
    )
    mine = [ps.topic(t) for t in topics.ALL_TOPICS]
    create_topics(kafka, mine, partitions=1)
    now = time.time()
    producer = TypedProducer(kafka)
    for status in statuses(now):
        producer.send(ps.topic(topics.POP_STATUS), status.pop, status)
    for pop in ("a", "b"):
        producer.send(ts.topic(topics.POP_LOAD), pop, pop_load(pop, now))
    producer.flush()

    bus = KafkaBus(kafka)
    store = TableStore(client, prefix=f"{unique}:table")
    engine = PolicyEngineService(ps, NETWORK, bus)
    writers = {pop: TableWriterService(ts, NETWORK, pop, store, bus) for pop in ("a", "b")}
    size = 1 << 16
    want = {"a": {2: round(1.5 / 9.0 * size)}, "b": {3: round(1.5 / 7.5 * size)}}
    deadline = time.monotonic() + 60.0
    events: list[PolicyEvent] = []
    try:
        while True:
            assert time.monotonic() < deadline, f"tables not as wanted; events {events}"
            engine.consumer.poll_batch(engine.handle, timeout=0.2)
            if engine.consumer.stats.handled >= 3:
                events += engine.tick()
            for w in writers.values():
                w.consumer.poll_batch(w.handle, timeout=0.2)
            got = {}
            for pop in ("a", "b"):
                found = store.read(pop, 0)
                got[pop] = forwarded_counts(found[1]) if found else None
            if got == want:
                break
        assert {e.source: e.action for e in events} == {
            "a": PolicyAction.NEW,
            "b": PolicyAction.NEW,
        }
        header, table = read(store, "a", 0)
        assert header.policy_version == next(e.version for e in events if e.source == "a")
        assert all(b.primary in {server_address("a", 1), server_address("a", 2)} for b in table)
        assert {b.secondary for b in table if b.away} == {"10.100.2.1"}
        # Every PoP x tier got a table; the notices say which version holds which policy.
        for pop in ("a", "b"):
            for tier in (0, 1, 2):
                assert store.read(pop, tier) is not None
        notices = read_all(kafka, ts.topic(topics.TABLE_UPDATES))
        assert all(isinstance(n, TableUpdate) for n in notices)
        latest = max((n for n in notices if n.pop == "a" and n.tier == 0), key=lambda n: n.version)
        assert (latest.version, latest.policy_version) == (header.version, header.policy_version)
        assert latest.buckets_changed == want["a"][2] or latest.version == 1

        # A restarted writer adopts Redis and the compacted policy: nothing is rebuilt; each
        # tier's table is renewed once (an adopted table's age is unknown) with the same records.
        writers["a"].close()
        again = TableWriterService(ts, NETWORK, "a", store, bus)
        writers["a"] = again
        again.tick()
        assert again.written == 3
        renewed, same = read(store, "a", 0)
        assert same == table
        assert (renewed.version, renewed.policy_version) == (
            header.version + 1,
            header.policy_version,
        )
        # A restarted engine continues the version sequence and re-issues nothing.
        engine.close()
        engine = PolicyEngineService(ps, NETWORK, bus)
        assert engine.state.version == max(e.version for e in events)
    finally:
        engine.close()
        for w in writers.values():
            w.close()
