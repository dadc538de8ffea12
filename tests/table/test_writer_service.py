"""The table writer adapter on the in-memory bus and a dict store: policy in, tables out."""

from __future__ import annotations

import logging

import pytest
import redis

from popshift import topics as t
from popshift.bus import MemoryBus
from schemas.messages import PolicyAction, PolicyEvent, PolicyReason, Share, TableUpdate
from services.table_writer.codec import BadTableBlob, Header
from services.table_writer.service import TableWriterService
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import StaleVersion
from services.table_writer.table import Table, forwarded_counts
from tests.conftest import server_address
from tests.table.test_redis_kafka import NETWORK, pop_load

BITS = 8
SETTINGS = TableWriterSettings(table_bits=BITS)
NOW = 50.0


class MemoryTables:
    """The store's contract in a dict: versions only rise; ``down`` makes it fail like Redis."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, int], tuple[Header, Table]] = {}
        self.down = False

    def read(self, pop: str, tier: int) -> tuple[Header, Table] | None:
        if self.down:
            raise redis.ConnectionError("Redis is away")
        return self.tables.get((pop, tier))

    def current_version(self, pop: str, tier: int) -> int:
        if self.down:
            raise redis.ConnectionError("Redis is away")
        found = self.tables.get((pop, tier))
        return found[0].version if found else 0

    def write(self, table: Table, header: Header) -> None:
        if self.down:
            raise redis.ConnectionError("Redis is away")
        known = self.tables.get((header.pop, header.tier))
        if known is not None and known[0].version >= header.version:
            raise StaleVersion(f"current={known[0].version} new={header.version}")
        self.tables[(header.pop, header.tier)] = (header, table)


def policy(source: str, version: int, shares: dict[str, float]) -> PolicyEvent:
    return PolicyEvent(
        action=PolicyAction.NEW,
        source=source,
        version=version,
        issued_at=NOW,
        shares=[Share(tier=0, destination=d, share=x) for d, x in shares.items()],
        reason=PolicyReason(trigger_pop=source, rule="test"),
    )


def writer_on(bus: MemoryBus, store: MemoryTables) -> TableWriterService:
    return TableWriterService(SETTINGS, NETWORK, "a", store, bus, clock=lambda: NOW)


def test_own_policy_and_servers_become_tables_and_notices_others_are_ignored() -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    producer.send(t.POP_LOAD, "b", pop_load("b", NOW))
    producer.send(t.POLICIES, "b", policy("b", 1, {"c": 0.5}))
    producer.send(t.POLICIES, "a", policy("a", 2, {"b": 0.25}))
    producer.send(t.POLICIES, "a", policy("a", 3, {"zzz": 0.25}))  # unknown destination
    writer = writer_on(bus, store)
    assert writer.consumer.poll_batch(writer.handle) == 5

    header, table = store.tables[("a", 0)]
    assert forwarded_counts(table) == {2: (1 << BITS) // 4}
    assert header.policy_version == 2
    assert {pop for pop, _ in store.tables} == {"a"}
    notices: list[TableUpdate] = bus.replay(t.TABLE_UPDATES)
    latest = max((n for n in notices if n.tier == 0), key=lambda n: n.version)
    assert (latest.version, latest.policy_version) == (header.version, 2)
    (letter,) = bus.dead_letters(t.POLICIES)
    assert letter.reason == "unknown pop: destination 'zzz' is not a peer of a"


def test_a_restarted_writer_adopts_the_store_and_its_policy_and_rebuilds_nothing() -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    producer.send(t.POLICIES, "a", policy("a", 1, {"b": 0.25}))
    first = writer_on(bus, store)
    first.consumer.poll_batch(first.handle)
    first.close()
    before = dict(store.tables)
    again = writer_on(bus, store)  # same group: resumes after what the first one handled
    assert again.consumer.poll_batch(again.handle) == 0
    assert again.written == 0
    again.tick()  # an adopted table's age is unknown: each tier renewed once, same records
    assert again.written == len(before)
    for key, (header, table) in before.items():
        renewed, same = store.tables[key]
        assert same == table
        assert (renewed.version, renewed.policy_version) == (header.version + 1, 1)


def test_a_failed_store_write_is_retried_on_the_next_tick() -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    writer = writer_on(bus, store)
    store.down = True
    writer.consumer.poll_batch(writer.handle)
    assert writer.written == 0 and store.tables == {}
    store.down = False
    writer.tick()
    assert writer.written > 0 and ("a", 0) in store.tables


def _primaries(table: Table) -> set[str]:
    return {b.primary for b in table}


def test_a_server_change_whose_write_failed_is_applied_when_the_store_returns() -> None:
    """The failed write is the state's table and is retried as it was: the rebalance is kept."""
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    writer = writer_on(bus, store)
    writer.consumer.poll_batch(writer.handle)
    assert _primaries(store.tables[("a", 0)][1]) == {server_address("a", 1), server_address("a", 2)}
    store.down = True
    full = pop_load("a", NOW)
    gone = full.servers[1].model_copy(update={"healthy": False})
    one_left = full.model_copy(update={"servers": [full.servers[0], gone]})
    producer.send(t.POP_LOAD, "a", one_left)
    writer.consumer.poll_batch(writer.handle)
    writer.tick()
    writer.tick()
    assert writer.write_failures > 0
    assert _primaries(store.tables[("a", 0)][1]) == {server_address("a", 1), server_address("a", 2)}
    store.down = False
    writer.tick()
    for tier, (_, table) in ((k[1], v) for k, v in store.tables.items()):
        assert _primaries(table) == {server_address("a", 1)}, (
            f"tier {tier}: the server change was lost"
        )
    assert not writer._pending


def test_a_store_that_comes_back_empty_gets_every_tier_rewritten_within_one_tick() -> None:
    bus, store = MemoryBus(), MemoryTables()
    bus.producer().send(t.POP_LOAD, "a", pop_load("a", NOW))
    writer = writer_on(bus, store)
    writer.consumer.poll_batch(writer.handle)
    before = dict(store.tables)
    assert before
    store.tables.clear()  # Redis restarted without its data
    writer.tick()
    assert set(store.tables) == set(before)
    for key, (header, table) in before.items():
        again, same = store.tables[key]
        assert same == table and again.version == header.version + 1
    assert writer.rewrites == len(before)


def test_an_unreadable_table_in_the_store_is_written_afresh_above_its_version() -> None:
    """An older blob format (codec.BadTableBlob) must not stop the writer."""

    class OldFormat(MemoryTables):
        def read(self, pop: str, tier: int) -> tuple[Header, Table] | None:
            found = super().read(pop, tier)
            if found is not None and found[0].version == 7:
                raise BadTableBlob("not a popshift table (format 0)")
            return found

    bus, store = MemoryBus(), OldFormat()
    old = Header(pop="a", tier=0, version=7, policy_version=0, bits=BITS, written_at=1.0, shares={})
    store.tables[("a", 0)] = (old, [])
    bus.producer().send(t.POP_LOAD, "a", pop_load("a", NOW))
    writer = writer_on(bus, store)  # adopting tier 0 fails: logged, not fatal
    writer.consumer.poll_batch(writer.handle)
    writer.tick()
    header, table = store.tables[("a", 0)]
    assert header.version > 7 and len(table) == 1 << BITS


def test_a_lapsed_policy_is_said_loudly_and_a_deposed_engines_policy_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    leased = policy("a", 5, {"b": 0.25}).model_copy(update={"epoch": 2, "expires_at": NOW + 3.0})
    producer.send(t.POLICIES, "a", leased)
    clock = [NOW]
    writer = TableWriterService(SETTINGS, NETWORK, "a", store, bus, clock=lambda: clock[0])
    writer.consumer.poll_batch(writer.handle)
    assert forwarded_counts(store.tables[("a", 0)][1]) == {2: (1 << BITS) // 4}
    # The engine of epoch 1, deposed, still talking: refused whatever its version.
    producer.send(t.POLICIES, "a", policy("a", 9, {"c": 0.5}).model_copy(update={"epoch": 1}))
    writer.consumer.poll_batch(writer.handle)
    (letter,) = bus.dead_letters(t.POLICIES)
    assert "deposed" in letter.reason
    # No renewal while pop-load keeps coming (the bus is alive): the lease runs out.
    for step in range(1, 6):
        clock[0] = NOW + step
        producer.send(t.POP_LOAD, "a", pop_load("a", clock[0]))
        writer.consumer.poll_batch(writer.handle)
        with caplog.at_level(logging.ERROR, logger="popshift.table_writer"):
            writer.tick()
    assert writer.state.lapses == 1
    assert forwarded_counts(store.tables[("a", 0)][1]) == {}
    assert [r.message for r in caplog.records if "LEASE RAN OUT" in r.message] == [
        "a: POLICY LEASE RAN OUT (v5 not renewed by the engine): back to local, established "
        "connections kept by their second chance (1 lapses so far)"
    ]
