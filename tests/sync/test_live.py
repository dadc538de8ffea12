"""The sync on real BPF maps, Redis and Kafka (root): the pipeline from pop-status to the maps,
a Redis outage (the maps keep their table, then converge), and a restarted process that
reconciles a bucket changed by hand."""

from __future__ import annotations

import ipaddress as ia
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from popshift import topics
from popshift.bus import KafkaBus, TypedConsumer, TypedProducer, create_topics
from popshift.credentials import KafkaAccess
from popshift.network import load_network
from popshift.replay import read_all
from schemas.bucket import Bucket, Flag
from schemas.messages import DataplaneStats
from services.forwarder.loader import DEFAULT_PIN_ROOT, Forwarder, Role
from services.forwarder.sync import Image, LoaderMaps, SyncService, map_image
from services.forwarder.sync_settings import SyncSettings
from services.policy_engine.service import PolicyEngineService
from services.policy_engine.settings import PolicySettings
from services.table_writer.codec import Header, decode_records
from services.table_writer.service import TableWriterService
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import TableStore
from tests.forwarder.conftest import require_root
from tests.sync.helpers import table
from tests.table.test_redis_kafka import pop_load, statuses

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")
LOCAL = REPO / "deploy" / "local"

OpenMaps = Callable[[int], Forwarder]


@pytest.fixture
def open_maps(unique: str) -> Iterator[OpenMaps]:
    """Pinned edge programs of a given table size, under a pin root of this test's own."""
    require_root()
    root = DEFAULT_PIN_ROOT / f"t_{unique}"
    opened: list[Forwarder] = []

    def _open(bits: int) -> Forwarder:
        defines = None if bits == 16 else {"BUCKET_BITS": bits}
        fwd = Forwarder.open(Role.EDGE, "a-edge1", pin_root=root, defines=defines)
        opened.append(fwd)
        return fwd

    try:
        yield _open
    finally:
        for fwd in opened:
            fwd.close()
        shutil.rmtree(root, ignore_errors=True)


def redis_image(client: redis.Redis[bytes], prefix: str, tier: int = 0) -> tuple[int, Image]:
    found = client.get(f"{prefix}:a:{tier}:current")
    assert found is not None
    raw = client.get(f"{prefix}:a:{tier}:v{int(found)}")
    assert raw is not None
    return int(found), map_image(*decode_records(raw))


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Running:
    """A SyncService loop on a thread of its own, stopped (and checked) on exit."""

    def __init__(self, service: SyncService) -> None:
        self.service = service
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="sync")

    def _run(self) -> None:
        try:
            self.service.run(self.stop)
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> SyncService:
        self.thread.start()
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10.0)
        self.service.close()
        assert not self.thread.is_alive() and not self.errors, self.errors


@pytest.mark.kafka
@pytest.mark.redis
def test_pop_status_to_policy_to_redis_to_the_maps(
    kafka: KafkaAccess, client: redis.Redis[bytes], unique: str, open_maps: OpenMaps
) -> None:
    """N=16, the production table size; the poll is 30 s, so only notices can make it quick."""
    fwd = open_maps(16)
    common: dict[str, Any] = {
        "topic_prefix": unique,
        "kafka_bootstrap": kafka.bootstrap,
        "topic_partitions": 1,
    }
    prefix = f"{unique}:table"
    ps = PolicySettings(
        **common,
        policy_group=f"{unique}-pe",
        policy_holdoff_s=0.0,
        policy_max_step=1.0,
        policy_deadband=0.0,
        policy_tier_mix={0: 1.0},
    )
    ts = TableWriterSettings(
        **common, table_key_prefix=prefix, table_group_prefix=f"{unique}-tw", table_bits=16
    )
    ss = SyncSettings(
        **common, table_key_prefix=prefix, sync_poll_s=30.0, sync_stats_interval_s=0.2
    )
    create_topics(kafka, [ps.topic(t) for t in topics.ALL_TOPICS], partitions=1)
    producer = TypedProducer(kafka)
    consumer = TypedConsumer(
        kafka,
        f"{unique}-sync",
        [ss.topic(topics.TABLE_UPDATES)],
        dead_letter_producer=producer,
    )
    service = SyncService(
        ss, LoaderMaps(fwd), client, pop="a", node="a-edge1", consumer=consumer, producer=producer
    )
    bus = KafkaBus(kafka)
    engine = PolicyEngineService(ps, NETWORK, bus)
    writer = TableWriterService(ts, NETWORK, "a", TableStore(client, prefix=prefix), bus)
    size = 1 << 16
    want_away = round(1.5 / 9.0 * size)
    try:
        with Running(service) as sync:
            now = time.time()
            for status in statuses(now):
                producer.send(ps.topic(topics.POP_STATUS), status.pop, status)
            producer.send(ts.topic(topics.POP_LOAD), "a", pop_load("a", now))
            producer.flush()
            store = TableStore(client, prefix=prefix)

            def caught_up() -> bool:
                """The writer applied the policy and the maps hold its latest version."""
                held = sync.state.tiers[0].version
                return writer.state.policy_version > 0 and held == store.current_version("a", 0)

            started = time.monotonic()
            while not caught_up():
                assert time.monotonic() < started + 25.0, "the maps did not follow the policy"
                engine.consumer.poll_batch(engine.handle, timeout=0.1)
                if engine.consumer.stats.handled >= 3:
                    engine.tick()
                writer.consumer.poll_batch(writer.handle, timeout=0.1)
            assert time.monotonic() - started < ss.sync_poll_s  # notices, not the poll
            assert sync.state.notices >= 2
        version, wanted = redis_image(client, prefix)
        assert sync.state.tiers[0].version == version
        held = LoaderMaps(fwd).read(0)
        assert np.array_equal(held, wanted)  # every byte of every bucket, read back
        flags = held["flags"]
        away = (flags & (Flag.AWAY | Flag.INTER_POP)) == (Flag.AWAY | Flag.INTER_POP)
        assert int(away.sum()) == want_away
        assert set(held["secondary_pop"][away].tolist()) == {2}
        assert bytes(held[away][0]["secondary"])[12:] == ia.ip_address("10.100.2.1").packed
        for tier in (1, 2):  # every tier of the PoP got its table
            assert np.array_equal(LoaderMaps(fwd).read(tier), redis_image(client, prefix, tier)[1])
        stats = read_all(kafka, ss.topic(topics.DATAPLANE_STATS))
        assert stats and all(isinstance(s, DataplaneStats) for s in stats)
        assert {(s.pop, s.node) for s in stats} == {("a", "a-edge1")}
        assert [t.tier for t in stats[-1].tiers] == [0, 1, 2, 3, 4]
    finally:
        engine.close()
        writer.close()


def redis_script(name: str, *args: str) -> None:
    subprocess.run(["bash", str(LOCAL / name), *args], check=True, timeout=120, capture_output=True)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_outage_keeps_the_last_table_then_converges(
    client: redis.Redis[bytes], sync_settings: SyncSettings, open_maps: OpenMaps
) -> None:
    bits = 8
    fwd = open_maps(bits)
    maps = LoaderMaps(fwd)
    prefix = sync_settings.table_key_prefix
    store = TableStore(client, prefix=prefix)
    store.write(table(bits, {"b": 0.25}), Header("a", 0, 3, 3, bits, 1.0))
    _, first = redis_image(client, prefix)
    service = SyncService(sync_settings, maps, client, pop="a", node="a-edge1")
    with Running(service) as sync:
        wait_for("the first table", lambda: sync.state.tiers[0].version == 3)
        assert np.array_equal(maps.read(0), first)
        try:
            redis_script("redis-stop.sh", "--wipe")  # a Redis that lost its data
            wait_for("failed Redis reads", lambda: sync.state.redis_failures >= 3)
            assert np.array_equal(maps.read(0), first)  # fail static
        finally:
            redis_script("redis-start.sh")
        # Redis came back empty: no table is not a reason to clear the maps.
        wait_for("Redis back", lambda: sync.backoff.failures == 0, 10.0)
        assert np.array_equal(maps.read(0), first)
        # A writer starts again from version 1: lower than what the maps hold, but current.
        store.write(table(bits, {"c": 0.5}), Header("a", 0, 1, 1, bits, 2.0))
        _, second = redis_image(client, prefix)
        wait_for("the new table", lambda: sync.state.tiers[0].version == 1, 10.0)
        assert np.array_equal(maps.read(0), second) and sync.state.redis_failures >= 3


@pytest.mark.redis
def test_a_restarted_sync_process_reconciles_a_bucket_changed_by_hand(
    client: redis.Redis[bytes], unique: str, open_maps: OpenMaps
) -> None:
    bits = 10
    fwd = open_maps(bits)
    maps = LoaderMaps(fwd)
    prefix = f"{unique}:table"
    TableStore(client, prefix=prefix).write(
        table(bits, {"b": 0.1, "c": 0.2}), Header("a", 1, 4, 4, bits, time.time())
    )
    _, wanted = redis_image(client, prefix, tier=1)
    env = dict(
        os.environ,
        POPSHIFT_TABLE_KEY_PREFIX=prefix,
        POPSHIFT_SYNC_KAFKA="false",
        POPSHIFT_TABLE_BITS=str(bits),
        POPSHIFT_SYNC_POLL_S="0.1",
    )
    cmd = [sys.executable, "-m", "services.forwarder.sync", "--pop", "a", "--node", "a-edge1"]
    cmd += ["--pin-dir", str(fwd.pin_dir.parent)]

    def run_until(done: Callable[[], bool]) -> str:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        try:
            wait_for("the sync process", done, 20.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        return err

    first = run_until(lambda: np.array_equal(maps.read(1), wanted))
    assert "adopted" in first and f"reconciled, {1 << bits} buckets written" in first
    fwd.apply_table_diff(1, {17: Bucket(primary="203.0.113.9")})
    assert not np.array_equal(maps.read(1), wanted)
    second = run_until(lambda: np.array_equal(maps.read(1), wanted))
    assert "tier 1: v4 reconciled, 1 buckets written" in second
