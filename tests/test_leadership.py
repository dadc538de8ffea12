"""One holder at a time, on the real Redis: the engine's leader lock and a PoP's writer lock."""

from __future__ import annotations

import dataclasses
import time

import pytest

from popshift import redis_client
from popshift.credentials import RedisAccess
from popshift.leadership import Leadership
from services.table_writer.codec import Header
from services.table_writer.store import Fenced, TableStore, writer_lock_key
from services.table_writer.table import Server, new_table

pytestmark = [pytest.mark.redis]


def claim(redis_access: RedisAccess, key: str, holder: str, ttl_s: float = 5.0) -> Leadership:
    return Leadership(redis_client.connect(redis_access), key, holder, ttl_s)


def test_one_holder_at_a_time_and_every_change_raises_the_epoch(
    redis_access: RedisAccess, unique: str
) -> None:
    key = f"{unique}:leader"
    first, second = claim(redis_access, key, "one"), claim(redis_access, key, "two")
    e1 = first.hold()
    assert e1 is not None
    assert second.hold() is None and second.current_holder() == "one"
    assert first.hold() == e1  # a renewal keeps the epoch
    first.release()  # a clean stop hands over at once
    e2 = second.hold()
    assert e2 is not None and e2 > e1
    assert first.hold() is None
    # A holder that stops renewing loses the lock when it expires.
    quick_key = f"{unique}:quick"
    quick, patient = (
        claim(redis_access, quick_key, "q", ttl_s=0.3),
        claim(redis_access, quick_key, "p"),
    )
    assert quick.hold() is not None and patient.hold() is None
    time.sleep(0.5)
    assert patient.hold() is not None
    assert quick.hold() is None and quick.epoch is None


def test_a_redis_that_lost_the_epoch_never_hands_out_one_already_used(
    redis_access: RedisAccess, unique: str
) -> None:
    key = f"{unique}:leader"
    first = claim(redis_access, key, "one")
    assert first.hold(floor=41) == 42  # the floor: the newest epoch seen on policies.v1
    client = redis_client.connect(redis_access)
    client.delete(key, f"{key}:epoch")  # Redis back empty
    second = claim(redis_access, key, "two")
    assert second.hold(floor=42) == 43
    assert first.hold(floor=42) is None


def test_a_holder_cut_off_from_redis_keeps_its_role_and_a_standby_stays_one(
    redis_access: RedisAccess, unique: str
) -> None:
    key = f"{unique}:leader"
    holder = claim(redis_access, key, "one")
    epoch = holder.hold()
    assert epoch is not None
    standby = claim(redis_access, key, "two")
    # The same processes, their Redis gone (a port nothing listens on).
    for lock in (holder, standby):
        lock._script = redis_client.connect(
            dataclasses.replace(redis_access, url="rediss://127.0.0.1:1/0"), 0.2
        ).register_script("")
    assert holder.hold() == epoch and holder.unreachable == 1
    assert standby.hold() is None


def test_a_writer_that_lost_its_pops_lock_cannot_write_a_table(
    redis_access: RedisAccess, unique: str
) -> None:
    prefix = f"{unique}:table"
    key = writer_lock_key("a", prefix)
    old = claim(redis_access, key, "old", ttl_s=0.3)
    new = claim(redis_access, key, "new")
    client = redis_client.connect(redis_access)
    stores = {
        lock.holder: TableStore(client, prefix=prefix, fence=lock.fence_args())
        for lock in (old, new)
    }
    table = new_table([Server("192.0.2.1", 8.0)], 4, 1.0)

    def header(version: int) -> Header:
        return Header("a", 0, version, 1, 4, time.time(), {})

    assert old.hold() is not None
    stores["old"].write(table, header(1))
    with pytest.raises(Fenced):
        stores["new"].write(table, header(2))  # the standby may not write
    time.sleep(0.5)  # the old writer paused past its lock's time...
    assert new.hold() is not None
    with pytest.raises(Fenced):
        stores["old"].write(table, header(2))  # ...and woke up: its write does not land
    stores["new"].write(table, header(2))
    assert stores["new"].current_version("a", 0) == 2
    # Redis back empty: the holder's next write takes its lock back; the other stays out.
    client.delete(key)
    stores["new"].write(table, header(3))
    assert new.current_holder() == "new" and old.hold() is None
