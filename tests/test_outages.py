"""Every service survives Kafka and Redis: the real broker and the real Redis are stopped.

Each test stops a shared service (deploy/local/*-stop.sh) and starts it again, so they are slow
and run one at a time; the services run as real processes, as the lab runs them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import redis

from popshift import redis_client
from popshift import topics as t
from popshift.bus import Received
from popshift.credentials import KafkaAccess, RedisAccess
from popshift.settings import Settings
from schemas.messages import PopLoad
from services.table_writer.store import TableStore, writer_lock_key
from tests.conftest import LOCAL, REPO
from tests.feedback.helpers import SimulatedAgents, TopicReader, service

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

INTERVAL_S = 0.5
SERVERS = {pop: [f"{pop}{i}" for i in (1, 2)] for pop in ("a", "b", "c")}
TIERS = (0, 1, 2)


def _local(script: str, *args: str) -> None:
    subprocess.run(["bash", str(LOCAL / script), *args], check=True, timeout=300)


@contextmanager
def kafka_stopped() -> Iterator[None]:
    _local("kafka-stop.sh")
    try:
        yield
    finally:
        _local("kafka-start.sh")


def _env(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> dict[str, str]:
    return {
        "POPSHIFT_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "POPSHIFT_REDIS_URL": redis_access.url,
        "POPSHIFT_TOPIC_PREFIX": unique,
        "POPSHIFT_TOPIC_PARTITIONS": "1",
        "POPSHIFT_INGEST_GROUP": f"{unique}-ingest",
        "POPSHIFT_HEARTBEAT_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_PUBLISH_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_POLICY_GROUP": f"{unique}-engine",
        "POPSHIFT_POLICY_OVERRIDES_KEY": f"{unique}:overrides",
        "POPSHIFT_POLICY_LEADER_KEY": f"{unique}:policy:leader",
        "POPSHIFT_TABLE_GROUP_PREFIX": f"{unique}-writer",
        "POPSHIFT_TABLE_KEY_PREFIX": f"{unique}:table",
        "POPSHIFT_TABLE_BITS": "8",
        "POPSHIFT_TABLE_TICK_S": "0.5",
        "POPSHIFT_ANALYTICS_APP_ID": f"{unique}-analytics",
        "POPSHIFT_ANALYTICS_DATADIR": str(tmp_path / "faust"),
    }


def _alive(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        assert p.poll() is None, f"{p.args!r} exited {p.returncode} (Kafka or Redis away)"


def _wait(predicate: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, f"not within {deadline_s}s: {what}"
        time.sleep(0.2)


def _tables(redis_access: RedisAccess, unique: str) -> TableStore:
    return TableStore(redis_client.connect(redis_access), prefix=f"{unique}:table")


def _has_tables(store: TableStore) -> bool:
    try:
        return all(store.current_version("a", tier) > 0 for tier in TIERS)
    except redis.RedisError:
        return False


def _services(
    stack: ExitStack, env: dict[str, str], *specs: tuple[str, tuple[str, ...]]
) -> list[subprocess.Popen[bytes]]:
    return [stack.enter_context(service(m, env, *args)) for m, args in specs]


INGEST = ("services.feedback_ingest.ingest", ())
ENGINE = ("services.policy_engine.service", ())
WRITER_A = ("services.table_writer.service", ("a",))


def test_services_started_while_kafka_is_down_wait_and_then_work(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> None:
    env = _env(kafka, redis_access, unique, tmp_path)
    names = Settings(topic_prefix=unique)
    store = _tables(redis_access, unique)
    with ExitStack() as stack:
        with kafka_stopped():
            procs = [
                stack.enter_context(service(m, env, *args))
                for m, args in (
                    ("services.feedback_ingest.ingest", ()),
                    ("services.analytics.app", ()),
                    ("services.policy_engine.service", ()),
                    ("services.table_writer.service", ("a",)),
                )
            ]
            time.sleep(6.0)  # several connection attempts each
            _alive(procs)
        # Kafka is back: every service starts working without being restarted.
        agents = stack.enter_context(
            SimulatedAgents(kafka, names.topic(t.FEEDBACK), SERVERS, INTERVAL_S)
        )
        statuses = TopicReader(kafka, names.topic(t.POP_STATUS), f"{unique}-r")
        stack.callback(statuses.close)
        statuses.wait_for(lambda ms: {r.value.pop for r in ms} >= {"a", "b", "c"}, 90, "status")
        _wait(lambda: _has_tables(store), 30, "a's tables in Redis")
        assert agents.sent > 0
        _alive(procs)


def _unhealthy(msgs: list[Received]) -> list[PopLoad]:
    return [
        r.value
        for r in msgs
        if r.value.healthy_capacity_cores <= 0.0 or not all(s.healthy for s in r.value.servers)
    ]


def test_a_kafka_outage_mid_run_kills_nothing_and_marks_no_server_down(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> None:
    env = _env(kafka, redis_access, unique, tmp_path)
    names = Settings(topic_prefix=unique)
    store = _tables(redis_access, unique)
    with ExitStack() as stack:
        procs = _services(stack, env, INGEST, ENGINE, WRITER_A)
        stack.enter_context(SimulatedAgents(kafka, names.topic(t.FEEDBACK), SERVERS, INTERVAL_S))
        loads = TopicReader(kafka, names.topic(t.POP_LOAD), f"{unique}-r")
        stack.callback(loads.close)
        loads.wait_for(lambda ms: {r.value.pop for r in ms} >= {"a", "b", "c"}, 60, "pop-load")
        _wait(lambda: _has_tables(store), 30, "a's tables in Redis")
        with kafka_stopped():
            time.sleep(8.0)  # > K (3) heartbeat intervals of every server, many ticks
            _alive(procs)
        back = time.time()
        version = store.current_version("a", 0)
        # A fresh reader from the beginning: what the ingest published before, during, after.
        after = TopicReader(kafka, names.topic(t.POP_LOAD), f"{unique}-r2")
        stack.callback(after.close)
        after.wait_for(lambda ms: any(r.value.at > back + 2.0 for r in ms), 60, "loads after")
        assert _unhealthy(after.messages) == [], "servers marked down by a bus outage"
        _wait(lambda: store.current_version("a", 0) > version, 20, "writer renews after")
        _alive(procs)


def test_redis_that_comes_back_empty_gets_the_tables_with_the_change_it_missed(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> None:
    """Redis dies and comes back empty; meanwhile a server went silent. Within a tick of its
    return every tier is rewritten, without the silent server (the failed write was kept)."""
    env = _env(kafka, redis_access, unique, tmp_path)
    names = Settings(topic_prefix=unique)
    store = _tables(redis_access, unique)
    with ExitStack() as stack:
        procs = _services(stack, env, INGEST, WRITER_A)
        agents = stack.enter_context(
            SimulatedAgents(kafka, names.topic(t.FEEDBACK), SERVERS, INTERVAL_S)
        )
        _wait(lambda: _has_tables(store), 60, "a's tables in Redis")
        found = store.read("a", 0)
        assert found is not None
        everyone = {b.primary for b in found[1]}
        assert len(everyone) == 2
        _local("redis-stop.sh", "--wipe")
        try:
            agents.silent.add("a2")  # marked down after 3 intervals: a write Redis cannot take
            time.sleep(4.0)
            _alive(procs)
        finally:
            _local("redis-start.sh")
        started = time.monotonic()
        _wait(lambda: _has_tables(store), 5, "every tier rewritten")
        for tier in TIERS:
            found = store.read("a", tier)
            assert found is not None
            primaries = {b.primary for b in found[1]}
            assert len(primaries) == 1 and primaries < everyone, f"tier {tier}: {primaries}"
        assert time.monotonic() - started < 5
        _alive(procs)


def test_two_writers_of_one_pop_one_writes_and_the_other_takes_over_after_a_kill_9(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> None:
    env = _env(kafka, redis_access, unique, tmp_path) | {"POPSHIFT_TABLE_LOCK_TTL_S": "2"}
    names = Settings(topic_prefix=unique)
    store = _tables(redis_access, unique)
    lock_key = writer_lock_key("a", f"{unique}:table")
    client = redis_client.connect(redis_access)

    def holder() -> str | None:
        raw = client.get(lock_key)
        return raw.decode() if raw else None

    with ExitStack() as stack:
        stack.enter_context(service("services.feedback_ingest.ingest", env))
        stack.enter_context(SimulatedAgents(kafka, names.topic(t.FEEDBACK), SERVERS, INTERVAL_S))
        first = subprocess.Popen(
            [sys.executable, "-m", "services.table_writer.service", "a"],
            cwd=REPO,
            env={**os.environ, **env},
            stderr=subprocess.DEVNULL,
        )
        stack.callback(first.kill)
        _wait(lambda: holder() == f"{socket.gethostname()}:{first.pid}", 30, "first holds")
        _wait(lambda: _has_tables(store), 60, "a's tables in Redis")
        second = stack.enter_context(service("services.table_writer.service", env, "a"))
        time.sleep(3.0)  # the second waits: the lock stays the first's
        assert holder() == f"{socket.gethostname()}:{first.pid}"
        version = store.current_version("a", 0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        _wait(lambda: holder() == f"{socket.gethostname()}:{second.pid}", 10, "second holds")
        assert time.monotonic() - killed <= 2.0 + 2 * 0.5 + 1.0  # TTL + two ticks + slack
        # The successor adopted the tables and writes on from there (renewed at once).
        _wait(lambda: store.current_version("a", 0) > version, 10, "the successor writes")
        _alive([second])
