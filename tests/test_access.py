"""Every principal against the real Kafka and Redis: one thing it may do works, one it may not
fails with an authorization error; and nobody gets in without a password."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from popshift import redis_client
from popshift import topics as t
from popshift.access import Naming, grant_kafka, grant_redis, principals
from popshift.bus import create_topics
from popshift.credentials import KafkaAccess, RedisAccess
from popshift.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}


@dataclass(frozen=True)
class World:
    naming: Naming

    def topic(self, topic: t.Topic) -> str:
        return self.naming.topic(topic)

    def as_(self, principal: str) -> Settings:
        return self.naming.settings.model_copy(update={"principal": principal})

    def key(self, pop: str, name: str = "x") -> str:
        return f"{self.naming.table_key_prefix}:{pop}:{name}"


@pytest.fixture(scope="module")
def world(kafka: KafkaAccess, redis_access: RedisAccess) -> Iterator[World]:
    prefix = f"acl{__import__('uuid').uuid4().hex[:8]}"
    admin = Settings(topic_prefix=prefix, principal="admin")
    naming = Naming(
        settings=admin,
        ingest_group=f"{prefix}-ingest",
        analytics_app_id=f"{prefix}-analytics",
        policy_group=f"{prefix}-policy",
        table_group_prefix=f"{prefix}-table",
        sync_group_prefix=f"{prefix}-sync",
        table_key_prefix=f"{prefix}:table",
        leader_key=f"{prefix}:leader",
        overrides_key=f"{prefix}:overrides",
    )
    create_topics(admin.kafka(), [admin.topic(x) for x in t.ALL_TOPICS], 1)
    who = principals(naming, ["a", "b"])
    grant_kafka(admin, who)
    grant_redis(admin, who)
    yield World(naming)
    client = redis_client.connect(admin.redis())
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def produce(settings: Settings | dict[str, object], topic: str) -> KafkaError | None:
    """Sends one message; the delivery's error (None = written)."""
    config = settings.kafka().config() if isinstance(settings, Settings) else settings
    producer = Producer({**config, "message.timeout.ms": 10_000, "log_level": 0})
    errors: list[KafkaError | None] = []
    producer.produce(topic, b"probe", key=b"a", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(15)
    return errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT)


def consume(settings: Settings, topic: str, group: str) -> KafkaError | None:
    """Joins ``group`` and polls ``topic`` once; the first error (None = allowed, even empty)."""
    consumer = Consumer(
        {**settings.kafka().config(), "group.id": group, "auto.offset.reset": "earliest"}
    )
    try:
        consumer.subscribe([topic])
        for _ in range(20):
            msg = consumer.poll(0.5)
            err = msg.error() if msg is not None else None
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                return err
            if consumer.assignment():
                consumer.committed([TopicPartition(topic, 0)], timeout=10)
                return None
        return KafkaError(KafkaError._TIMED_OUT)
    except Exception as exc:  # committed() raises the group's authorization error
        return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    finally:
        consumer.close()


def denied(err: KafkaError | None) -> bool:
    return err is not None and err.code() in DENIED


def redis_as(world: World, principal: str) -> redis.Redis[bytes]:
    return redis_client.connect(world.as_(principal).redis())


def test_kafka_each_principal_may_do_its_job_and_nothing_else(world: World) -> None:
    w = world
    may = {
        "agent": w.topic(t.FEEDBACK),
        "ingest": w.topic(t.POP_LOAD),
        "analytics": w.topic(t.POP_STATUS),
        "engine": w.topic(t.POLICIES),
        "writer-a": w.topic(t.TABLE_UPDATES),
        "sync-a": w.topic(t.DATAPLANE_STATS),
        "operator": w.topic(t.POLICY_AUDIT),
    }
    for principal, topic in may.items():
        assert produce(w.as_(principal), topic) is None, f"{principal} -> {topic}"
    # Only the engine writes policies; agents cannot fake statuses; syncs cannot announce tables.
    for principal in ("agent", "ingest", "analytics", "writer-a", "sync-a", "operator"):
        assert denied(produce(w.as_(principal), w.topic(t.POLICIES))), principal
    assert denied(produce(w.as_("agent"), w.topic(t.POP_STATUS)))
    assert denied(produce(w.as_("sync-a"), w.topic(t.TABLE_UPDATES)))
    assert denied(produce(w.as_("engine"), w.topic(t.POLICY_AUDIT)))  # only operators sign it


def test_kafka_reads_need_the_topic_and_the_principals_own_group(world: World) -> None:
    w = world
    assert (
        consume(w.as_("writer-a"), w.topic(t.POLICIES), f"{w.naming.table_group_prefix}-a") is None
    )
    # Another PoP's group (it would steal b's partitions) and a topic it has no business in.
    assert denied(
        consume(w.as_("writer-a"), w.topic(t.POLICIES), f"{w.naming.table_group_prefix}-b")
    )
    assert denied(consume(w.as_("agent"), w.topic(t.POLICIES), f"{w.naming.table_group_prefix}-a"))


def test_redis_keys_per_principal(world: World) -> None:
    w = world
    writer_a, sync_a = redis_as(w, "writer-a"), redis_as(w, "sync-a")
    assert writer_a.set(w.key("a"), b"1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer_a.set(w.key("b"), b"1")  # another PoP's tables
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer_a.set(w.naming.leader_key, b"me")  # the engine's lock
    with pytest.raises(redis.exceptions.NoPermissionError):
        writer_a.flushall()
    assert sync_a.get(w.key("a")) == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        sync_a.set(w.key("a"), b"2")  # reads only
    with pytest.raises(redis.exceptions.NoPermissionError):
        sync_a.get(w.key("b"))
    engine, operator = redis_as(w, "engine"), redis_as(w, "operator")
    assert engine.set(w.naming.leader_key, b"me")
    with pytest.raises(redis.exceptions.NoPermissionError):
        engine.set(w.key("a"), b"3")
    assert operator.set(w.naming.overrides_key, b"{}")
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.set(w.naming.leader_key, b"operator")
    redis_admin = w.naming.settings.redis()
    for name in ("agent", "ingest", "analytics"):  # no Redis user at all
        nobody = dataclasses.replace(redis_admin, username=name)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis_client.connect(nobody).ping()


def test_nobody_gets_in_unauthenticated(world: World) -> None:
    """From a shell on the machine: no policy written, no table key read or written."""
    w = world
    admin = w.naming.settings.kafka()
    plaintext = {"bootstrap.servers": admin.bootstrap, "socket.timeout.ms": 5000}
    assert produce(plaintext, w.topic(t.POLICIES)) is not None
    wrong = {**admin.config(), "sasl.username": "engine", "sasl.password": "guess"}
    err = produce(wrong, w.topic(t.POLICIES))
    assert err is not None and err.code() != KafkaError.NO_ERROR
    no_tls = redis.Redis(host="127.0.0.1", port=admin_port(w), socket_timeout=2)
    with pytest.raises(redis.RedisError):
        no_tls.get(w.key("a"))
    default_user = redis.Redis.from_url(w.naming.settings.redis_url, ssl_ca_certs=str(
        w.naming.settings.secrets.ca_file), socket_timeout=2)  # fmt: skip
    with pytest.raises(redis.exceptions.AuthenticationError):
        default_user.set(w.key("a"), b"evil")
    with pytest.raises(redis.exceptions.AuthenticationError):
        default_user.get(w.key("a"))


def admin_port(world: World) -> int:
    return int(world.naming.settings.redis_url.rsplit(":", 1)[1].split("/")[0])


def test_only_the_admin_creates_topics(world: World) -> None:
    """A typo'd or new prefix cannot make a service create a topic with the broker's defaults."""
    engine = world.as_("engine")
    elsewhere = engine.model_copy(update={"topic_prefix": f"{engine.topic_prefix}-new"})
    with pytest.raises(KafkaException, match="may not create it"):
        create_topics(elsewhere.kafka(), [elsewhere.topic(t.POLICIES)], 1, timeout=10)


def test_the_operators_console_reads_every_topic_it_shows(world: World) -> None:
    """The console follows five topics as `operator` (assigned partitions, no group)."""
    import threading
    import time

    from popshift.bus import TypedProducer
    from popshift.console import Board, follow_kafka
    from popshift.network import load_network
    from schemas.messages import DataplaneStats, PopLoad, TableUpdate, TierCounters

    operator = world.as_("operator")
    board = Board(load_network(operator.network_file), 10.0, time.time)
    stop = threading.Event()
    follower = threading.Thread(target=follow_kafka, args=(board, operator, 600.0, stop))
    follower.start()
    try:
        admin = TypedProducer(world.naming.settings.kafka())
        now = time.time()
        admin.send(
            world.topic(t.POP_LOAD),
            "a",
            PopLoad(
                pop="a", at=now, servers=[], healthy_capacity_cores=0.0, combined_load_cores=0.0
            ),
        )
        admin.send(
            world.topic(t.DATAPLANE_STATS),
            "a",
            DataplaneStats(pop="a", node="a-edge", at=now, tiers=[TierCounters(tier=0, local=1)]),
        )
        admin.send(
            world.topic(t.TABLE_UPDATES),
            "a",
            TableUpdate(
                pop="a", tier=0, version=1, policy_version=0, buckets_changed=0, written_at=now
            ),
        )
        admin.flush()  # fmt: skip
        end = time.monotonic() + 30.0
        view = board.view
        while time.monotonic() < end and not (view.loads and view.counters and view.tables):
            time.sleep(0.2)
        assert "a" in view.loads and ("a", "a-edge") in view.counters and ("a", 0) in view.tables
    finally:
        stop.set()
        follower.join(15.0)
