"""The sync loop against the real Redis with in-memory maps: apply, diff, refuse, fail static."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import redis

from popshift import topics
from popshift.bus import MemoryBus
from schemas.messages import TableUpdate
from services.forwarder.sync import SyncService, map_image, redis_client
from services.forwarder.sync_settings import SyncSettings
from services.table_writer.codec import Header, decode_records
from services.table_writer.store import TableStore
from tests.sync.helpers import FakeMaps, blob, table

BITS = 8
pytestmark = pytest.mark.redis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def service(
    settings: SyncSettings, maps: FakeMaps, client: redis.Redis[bytes], clock: Clock | None = None
) -> SyncService:
    return SyncService(settings, maps, client, pop="a", node="a-edge1", clock=clock or time.time)


def held(maps: FakeMaps, tier: int, client: redis.Redis[bytes], prefix: str) -> bool:
    """Do the maps hold Redis's current table of ``tier``, byte for byte?"""
    store = TableStore(client, prefix=prefix)
    version = store.current_version("a", tier)
    raw = client.get(f"{prefix}:a:{tier}:v{version}")
    assert raw is not None
    return bool(np.array_equal(maps.images[tier], map_image(*decode_records(raw))))


def test_follows_versions_and_writes_only_changed_buckets(
    sync_settings: SyncSettings, client: redis.Redis[bytes]
) -> None:
    prefix = sync_settings.table_key_prefix
    store = TableStore(client, prefix=prefix)
    maps = FakeMaps(BITS)
    sync = service(sync_settings, maps, client)
    assert sync.sync() == 0  # nothing in Redis: nothing written
    t1 = table(BITS)
    store.write(t1, Header("a", 0, 1, 1, BITS, 1.0))
    store.write(t1, Header("a", 2, 1, 1, BITS, 1.0))
    assert sync.sync() == 2
    assert held(maps, 0, client, prefix) and held(maps, 2, client, prefix)
    assert maps.writes == [(0, 1 << BITS), (2, 1 << BITS)]  # empty maps: every bucket
    assert maps.reads == 2  # a fresh sync reads the maps back before its first diff
    t2 = table(BITS, {"b": 0.1})
    store.write(t2, Header("a", 0, 2, 2, BITS, 2.0))
    assert sync.sync() == 1
    assert maps.writes[-1] == (0, round(0.1 * (1 << BITS)))
    assert held(maps, 0, client, prefix) and maps.reads == 2
    assert sync.sync() == 0 and sync.state.applied == 3


def test_restart_reads_maps_back_and_fixes_only_what_differs(
    sync_settings: SyncSettings, client: redis.Redis[bytes]
) -> None:
    prefix = sync_settings.table_key_prefix
    TableStore(client, prefix=prefix).write(table(BITS, {"c": 0.2}), Header("a", 1, 5, 5, BITS, 1))
    maps = FakeMaps(BITS)
    service(sync_settings, maps, client).sync()
    maps.images[1][7]["flags"] ^= 0x04  # someone flips one bucket's direction by hand
    maps.images[1][9]["secondary_pop"] = 77
    again = service(sync_settings, maps, client)
    assert again.sync() == 1
    assert maps.writes[-1] == (1, 2) and again.state.buckets_written == 2
    assert held(maps, 1, client, prefix)


def test_unreachable_redis_keeps_the_maps_and_backs_off(
    sync_settings: SyncSettings, client: redis.Redis[bytes]
) -> None:
    prefix = sync_settings.table_key_prefix
    TableStore(client, prefix=prefix).write(table(BITS, {"b": 0.3}), Header("a", 0, 1, 1, BITS, 1))
    maps = FakeMaps(BITS)
    clock = Clock()
    good = service(sync_settings, maps, client, clock)
    good.sync()
    before = maps.images[0].copy()
    dead = redis_client(sync_settings.model_copy(update={"redis_url": "rediss://127.0.0.1:1/0"}))
    down = service(sync_settings, maps, dead, clock)
    down.state = good.state  # the same process, its Redis gone
    assert down.sync() == 0 and down.state.redis_failures == 1
    assert down.sync() == 0 and down.state.redis_failures == 1  # backing off: no attempt
    clock.now += 0.1
    down.sync()
    clock.now += 0.2
    down.sync()
    assert down.state.redis_failures == 3 and down.backoff.next_at == pytest.approx(1000.7)
    assert np.array_equal(maps.images[0], before)
    down.tables = good.tables  # Redis is back
    clock.now += 1.0
    down.sync()
    assert down.backoff.failures == 0 and np.array_equal(maps.images[0], before)


def test_a_refused_table_stays_out_and_is_not_fetched_again(
    sync_settings: SyncSettings, client: redis.Redis[bytes]
) -> None:
    prefix = sync_settings.table_key_prefix
    store = TableStore(client, prefix=prefix)
    store.write(table(BITS), Header("a", 0, 1, 1, BITS, 1))
    maps = FakeMaps(BITS)
    sync = service(sync_settings, maps, client)
    sync.sync()
    before = maps.images[0].copy()
    client.set(f"{prefix}:a:0:v2", blob(table(BITS + 2), 2, BITS + 2))  # another table size
    client.set(f"{prefix}:a:0:current", b"2")
    assert sync.sync() == 0 and sync.state.refused == 1
    assert sync.sync() == 0 and sync.state.refused == 1
    assert np.array_equal(maps.images[0], before)


def test_a_failed_read_back_writes_nothing_and_is_retried(
    sync_settings: SyncSettings, client: redis.Redis[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store = TableStore(client, prefix=sync_settings.table_key_prefix)
    store.write(table(BITS), Header("a", 0, 1, 1, BITS, 1.0))
    maps = FakeMaps(BITS)
    sync = service(sync_settings, maps, client)
    real_read = maps.read

    def failing_read(tier: int) -> np.ndarray:
        raise OSError(5, "lookup batch failed")

    maps.read = failing_read  # type: ignore[method-assign]
    assert sync.sync() == 0
    assert maps.writes == [] and sync.state.map_failures == 1
    assert "map read-back failed" in caplog.text and "map write failed" not in caplog.text
    maps.read = real_read  # type: ignore[method-assign]
    assert sync.sync() == 1
    assert held(maps, 0, client, sync_settings.table_key_prefix)


def test_a_map_write_goes_on_from_the_notice_that_announced_its_table(
    sync_settings: SyncSettings, client: redis.Redis[bytes], spans: Any
) -> None:
    """The last step of the trace from a heartbeat (popshift/tracing.py): the BPF map write is
    a child of the table-updates.v1 notice that announced its table."""
    prefix = sync_settings.table_key_prefix
    TableStore(client, prefix=prefix).write(table(BITS), Header("a", 0, 1, 1, BITS, 1.0))
    sync = service(sync_settings, FakeMaps(BITS), client)
    bus = MemoryBus()
    notice = TableUpdate(
        pop="a", tier=0, version=1, policy_version=1, buckets_changed=256, written_at=1.0
    )
    bus.producer().send(topics.TABLE_UPDATES, "a", notice)
    bus.consumer("sync", [topics.TABLE_UPDATES]).poll_batch(sync.handle)
    assert sync.sync() == 1
    finished = spans.get_finished_spans()
    (told,) = [s for s in finished if s.name == f"{topics.TABLE_UPDATES.name} process"]
    (write,) = [s for s in finished if s.name == "bpf map write a-edge1 t0"]
    assert write.parent is not None and write.parent.span_id == told.context.span_id
    assert write.context.trace_id == told.context.trace_id
