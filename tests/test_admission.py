"""Inputs checked against the network description (popshift/admission.py, docs/security.md).

The probes a publisher on the bus could try, each dead-lettered with its reason and counted per
reason, changing no bucket: a heartbeat or a server list naming a foreign address or a huge
capacity, a policy beyond a tier's latency bound, of a tier that may not move or to an unknown
PoP, a policy from an epoch the engines never reached.
"""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError

from popshift import topics as t
from popshift.admission import Refused, check_epoch, check_server, check_share
from popshift.bus import MemoryBus, Producer
from popshift.leadership import read_epoch
from popshift.network import NetworkConfig
from schemas.messages import PolicyEvent, PopFeedback, PopLoad, ServerHeartbeat, ServerLoad
from services.feedback_ingest.ingest import Ingest
from services.feedback_ingest.settings import IngestSettings
from services.table_writer.codec import Header
from services.table_writer.service import TableWriterService
from services.table_writer.table import Server, Table, forwarded_counts, new_table
from services.table_writer.writer import new_state, on_policy, on_servers
from tests.conftest import NETWORK, server_address
from tests.table.test_redis_kafka import pop_load as good_pop_load
from tests.table.test_writer_service import BITS, NOW, SETTINGS, MemoryTables, policy

EVIL = "203.0.113.66"
A = NETWORK.pop("a")


def evil_heartbeat(address: str = EVIL, capacity: float = 900_000.0) -> ServerHeartbeat:
    return ServerHeartbeat(
        pop="a",
        server="evil",
        address=address,
        seq=1,
        sent_at=NOW,
        capacity_cores=capacity,
        cpu_busy_cores=0.0,
    )


# --- the network file -----------------------------------------------------------------------


def test_every_pop_declares_its_server_prefixes_and_size() -> None:
    raw = NETWORK.model_dump(mode="json")
    for field in ("server_prefixes", "max_server_cores"):
        broken = {**raw, "pops": [{k: v for k, v in raw["pops"][0].items() if k != field}]}
        with pytest.raises(ValidationError, match=field):
            NetworkConfig.model_validate(broken)
    host_bits = {**raw, "pops": [{**raw["pops"][0], "server_prefixes": ["10.100.1.1/24"]}]}
    with pytest.raises(ValidationError, match="server_prefixes"):
        NetworkConfig.model_validate(host_bits)


def test_the_checks_say_why() -> None:
    check_server(NETWORK, A, "a1", server_address("a"), A.max_server_cores)
    for address, capacity, reason in [
        (EVIL, 8.0, "server address outside the pop's prefixes: a/x at 203.0.113.66"),
        (server_address("b"), 8.0, "server address outside the pop's prefixes"),
        ("10.100.1.1", 8.0, "server address is an ingress: a/x claims 10.100.1.1"),
        (server_address("a"), 64.5, "server capacity above the pop's bound: a/x claims 64.5"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_server(NETWORK, A, "x", address, capacity)
    check_share(NETWORK, "a", 0, "b", 0.5)
    check_share(NETWORK, "a", 2, "b", 0.0)  # a zero share points no bucket anywhere
    for tier, dst, reason in [
        (0, "c", r"latency bound: a->c is 45 ms, tier 0 \(bulk\) allows 30 ms"),
        (1, "c", r"latency bound: a->c is 45 ms, tier 1 \(standard\) allows 15 ms"),
        (2, "b", r"tier not forwardable: tier 2 \(premium\)"),
        (0, "zzz", "unknown pop: destination 'zzz'"),
        (0, "a", "unknown pop: destination 'a' is not a peer of a"),
        (7, "b", "unknown tier: tier 7"),
    ]:
        with pytest.raises(Refused, match=reason):
            check_share(NETWORK, "a", tier, dst, 0.1)
    check_epoch(3, 3)
    check_epoch(2, 3)  # older epochs: the writer's (epoch, version) order decides
    check_epoch(99, None)  # not known: not checked
    with pytest.raises(Refused, match="epoch not current: epoch 4 is not the engine's current"):
        check_epoch(4, 3)


# --- probe 1: a foreign server ----------------------------------------------------------------


def ingest_on(bus: MemoryBus) -> Ingest:
    return Ingest(IngestSettings(ingest_warmup_s=0.0), NETWORK, bus, clock=lambda: NOW)


def test_ingest_dead_letters_a_foreign_or_oversized_server_and_publishes_without_it() -> None:
    bus = MemoryBus()
    ingest = ingest_on(bus)
    producer = bus.producer()
    good = evil_heartbeat(server_address("a"), 8.0).model_copy(update={"server": "a1"})
    producer.send(t.FEEDBACK, "a", good)
    producer.send(t.FEEDBACK, "a", evil_heartbeat())  # the probe as it is
    producer.send(t.FEEDBACK, "a", evil_heartbeat(server_address("a", 2)))  # in a, too big
    producer.send(t.FEEDBACK, "a", good.model_copy(update={"seq": 2, "address": EVIL}))  # moved
    one_bad = [
        ServerLoad(server="a3", address=server_address("a", 3), capacity_cores=8.0, utilisation=0),
        ServerLoad(server="evil", address=EVIL, capacity_cores=8.0, utilisation=0.0),
    ]
    producer.send(t.FEEDBACK, "a", PopFeedback(pop="a", seq=1, sent_at=NOW, servers=one_bad))
    ingest.consumer.poll_batch(ingest.handle)
    reasons = [x.reason for x in bus.dead_letters(t.FEEDBACK)]
    assert reasons == [
        "server address outside the pop's prefixes: a/evil at 203.0.113.66 is not in 10.100.1.0/24",
        "server capacity above the pop's bound: a/evil claims 900000 cores, a's servers have at"
        " most 64",
        "server address outside the pop's prefixes: a/a1 at 203.0.113.66 is not in 10.100.1.0/24",
        "server address outside the pop's prefixes: a/evil at 203.0.113.66 is not in 10.100.1.0/24",
    ]
    stats = ingest.stats()
    assert stats["dead_lettered[server address outside the pop's prefixes]"] == 3
    assert stats["dead_lettered[server capacity above the pop's bound]"] == 1
    ingest.publish(NOW)
    (load,) = bus.replay(t.POP_LOAD)
    assert [(s.server, s.address) for s in load.servers] == [("a1", server_address("a"))]


def writer_on(bus: MemoryBus, store: MemoryTables, epoch: list[int | None]) -> TableWriterService:
    return TableWriterService(
        SETTINGS, NETWORK, "a", store, bus, engine_epoch=lambda: epoch[0], clock=lambda: NOW
    )


def forged_load(capacity: float = 900_000.0, address: str = EVIL) -> PopLoad:
    good = good_pop_load("a", NOW)
    evil = ServerLoad(server="evil", address=address, capacity_cores=capacity, utilisation=0.0)
    return good.model_copy(update={"servers": [*good.servers, evil]})


def writer_with_tables() -> tuple[MemoryBus, MemoryTables, Producer, TableWriterService]:
    """PoP a's writer with its servers heard and a first policy applied (tables in the store)."""
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", good_pop_load("a", NOW))
    producer.send(t.POLICIES, "a", policy("a", 1, {"b": 0.25}))
    writer = writer_on(bus, store, [None])
    writer.consumer.poll_batch(writer.handle)
    return bus, store, producer, writer


def test_the_writer_refuses_a_forged_server_list_whatever_the_ingest_let_through() -> None:
    bus, store, producer, writer = writer_with_tables()
    before = dict(store.tables)
    producer.send(t.POP_LOAD, "a", forged_load())
    producer.send(t.POP_LOAD, "a", forged_load(capacity=8.0))
    producer.send(t.POP_LOAD, "a", forged_load(address=server_address("a", 3)))
    writer.consumer.poll_batch(writer.handle)
    writer.tick()
    assert [x.reason.split(":")[0] for x in bus.dead_letters(t.POP_LOAD)] == [
        "server address outside the pop's prefixes",
        "server address outside the pop's prefixes",
        "server capacity above the pop's bound",
    ]
    assert writer.consumer.stats.reasons["server address outside the pop's prefixes"] == 2
    assert {k: v[1] for k, v in store.tables.items()} == {k: v[1] for k, v in before.items()}
    assert EVIL not in writer.state.local_addresses
    # The pure core: refused before anything changed.
    state = new_state(NETWORK, "a", BITS, 60.0)
    with pytest.raises(Refused):
        on_servers(state, forged_load(), NOW)
    assert state.servers == [] and state.local_addresses == set()


def test_a_table_in_redis_pointing_at_a_foreign_server_is_not_adopted() -> None:
    """A table written before the checks existed, from a forged heartbeat: written afresh."""
    bus, store = MemoryBus(), MemoryTables()
    forged: Table = new_table([Server(EVIL, 8.0)], BITS, 1.0)
    old = Header(pop="a", tier=0, version=7, policy_version=0, bits=BITS, written_at=1.0, shares={})
    store.tables[("a", 0)] = (old, forged)
    bus.producer().send(t.POP_LOAD, "a", good_pop_load("a", NOW))
    writer = writer_on(bus, store, [None])
    assert 0 not in writer.state.tables
    writer.consumer.poll_batch(writer.handle)
    writer.tick()
    header, table = store.tables[("a", 0)]
    assert header.version > 7
    assert {b.primary for b in table} == {server_address("a", 1), server_address("a", 2)}


# --- probe 2: a policy the network does not allow ---------------------------------------------


def test_the_writer_dead_letters_a_policy_the_network_does_not_allow_and_keeps_its_tables() -> None:
    bus, store, producer, writer = writer_with_tables()
    before = {k: v[1] for k, v in store.tables.items()}
    premium = policy("a", 3, {"b": 0.5})
    premium = premium.model_copy(
        update={"shares": [s.model_copy(update={"tier": 2}) for s in premium.shares]}
    )
    for forged in (policy("a", 2, {"c": 0.5}), premium, policy("a", 4, {"zzz": 0.5})):
        producer.send(t.POLICIES, "a", forged)
    writer.consumer.poll_batch(writer.handle)
    writer.tick()
    assert [x.reason for x in bus.dead_letters(t.POLICIES)] == [
        "latency bound: a->c is 45 ms, tier 0 (bulk) allows 30 ms",
        "tier not forwardable: tier 2 (premium) may not be forwarded",
        "unknown pop: destination 'zzz' is not a peer of a",
    ]
    assert {k: v[1] for k, v in store.tables.items()} == before
    assert forwarded_counts(store.tables[("a", 0)][1]) == {2: (1 << BITS) // 4}
    assert writer.state.policy_version == 1
    producer.send(t.POLICIES, "a", policy("a", 5, {"b": 0.5}))  # the next real one applies
    writer.consumer.poll_batch(writer.handle)
    assert forwarded_counts(store.tables[("a", 0)][1]) == {2: (1 << BITS) // 2}


# --- probe 3: a policy from the future --------------------------------------------------------


def epoch_policy(version: int, epoch: int, share: float) -> PolicyEvent:
    return policy("a", version, {"b": share}).model_copy(update={"epoch": epoch})


def test_a_policy_from_an_epoch_the_engines_never_reached_is_dead_lettered() -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", good_pop_load("a", NOW))
    producer.send(t.POLICIES, "a", epoch_policy(10, 3, 0.25))
    producer.send(t.POLICIES, "a", epoch_policy(2**40, 99, 1.0))  # would shadow every real one
    epoch: list[int | None] = [3]
    writer = writer_on(bus, store, epoch)
    writer.consumer.poll_batch(writer.handle)
    (letter,) = bus.dead_letters(t.POLICIES)
    assert letter.reason == "epoch not current: epoch 99 is not the engine's current epoch 3"
    assert writer.consumer.stats.reasons["epoch not current"] == 1
    assert (writer.state.epoch, writer.state.policy_version) == (3, 10)
    assert forwarded_counts(store.tables[("a", 0)][1]) == {2: (1 << BITS) // 4}
    producer.send(t.POLICIES, "a", epoch_policy(11, 3, 0.5))  # the real engine goes on
    writer.consumer.poll_batch(writer.handle)
    assert forwarded_counts(store.tables[("a", 0)][1]) == {2: (1 << BITS) // 2}
    epoch[0] = 4  # a failover: the new leader's first policy is read against the new epoch
    producer.send(t.POLICIES, "a", epoch_policy(12, 4, 0.125))
    writer.consumer.poll_batch(writer.handle)
    assert (writer.state.epoch, writer.state.policy_version) == (4, 12)
    assert len(bus.dead_letters(t.POLICIES)) == 1


def test_without_the_epoch_key_a_policy_is_applied_as_before() -> None:
    """Redis away: the writer does not freeze (documented in services/table_writer/service.py)."""
    state = new_state(NETWORK, "a", BITS, 60.0)
    on_servers(state, good_pop_load("a", NOW), NOW)
    assert on_policy(state, epoch_policy(5, 9, 0.25), NOW, current_epoch=None)
    assert state.epoch == 9
    with pytest.raises(Refused, match="epoch 10 is not the engine's current epoch 9"):
        on_policy(state, epoch_policy(6, 10, 0.5), NOW, current_epoch=9)
    assert (state.epoch, state.policy_version) == (9, 5)


class FakeRedis:
    def __init__(self, value: bytes | Exception | None) -> None:
        self.value = value
        self.keys: list[str] = []

    def get(self, key: str) -> bytes | None:
        self.keys.append(key)
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.mark.parametrize(
    ("value", "epoch"),
    [(b"7", 7), (None, None), (redis.ConnectionError("away"), None), (b"x", None)],
)
def test_the_epoch_is_read_from_the_engines_lock(
    value: bytes | Exception | None, epoch: int | None
) -> None:
    client = FakeRedis(value)
    assert read_epoch(client, "popshift:policy:leader") == epoch  # type: ignore[arg-type]
    assert client.keys == ["popshift:policy:leader:epoch"]
