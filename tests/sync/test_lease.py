"""Leases on real Redis and real BPF maps (root): a table the writer stops renewing is cut back
to local within the lease, deeper after the drain, and comes back when renewed; a restarted sync
that cannot reach Redis cuts what the maps hold."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from schemas.bucket import Flag
from services.forwarder import packets as P
from services.forwarder.layout import GueHeader
from services.forwarder.loader import DEFAULT_PIN_ROOT, Forwarder, Role
from services.forwarder.sync import Lease, LoaderMaps, SyncService, local_image, redis_client
from services.forwarder.sync_settings import SyncSettings
from services.table_writer.codec import Header
from services.table_writer.store import TableStore
from tests.forwarder.conftest import require_root
from tests.sync.helpers import mixed_table
from tests.sync.test_live import Running, redis_image, wait_for

pytestmark = [pytest.mark.root, pytest.mark.redis]
BITS = 8
LEASE_S, DRAIN_S = 1.5, 1.5


@pytest.fixture
def edge(unique: str) -> Iterator[Forwarder]:
    """A pinned edge with the test packets' VIPs, so a SYN shows what the maps decide."""
    require_root()
    root = DEFAULT_PIN_ROOT / f"t_{unique}"
    fwd = Forwarder.open(Role.EDGE, "a-edge1", pin_root=root, defines={"BUCKET_BITS": BITS})
    try:
        fwd.configure(P.EDGE_CFG)
        fwd.set_vips(P.state(None).vips)
        yield fwd
    finally:
        fwd.close()
        shutil.rmtree(root, ignore_errors=True)


class Writer:
    """The table writer's renewal: the same table again as a new version, freshly dated."""

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self.store = TableStore(client, prefix=prefix)
        self.version = 0
        self.renewing = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="renewer")

    def write(self) -> None:
        self.version += 1
        header = Header("a", 0, self.version, 1, BITS, time.time())
        self.store.write(mixed_table(BITS), header)

    def _run(self) -> None:
        while not self.stop.wait(0.3):
            if self.renewing.is_set():
                self.write()

    def __enter__(self) -> Writer:
        self.write()
        self.renewing.set()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def syn_flags(fwd: Forwarder) -> set[int]:
    """GUE private flags the edge puts on new connections from 64 client ports."""
    out = set()
    for port in range(40000, 40064):
        _, frame = fwd.test_run(bytes(P.client(sport=port)))
        out.add(GueHeader.from_buffer_copy(frame[14 + 20 + 8 :]).priv_flags)
    return out


def test_an_unrenewed_table_goes_local_within_the_lease_and_comes_back(
    sync_settings: SyncSettings, client: redis.Redis[bytes], edge: Forwarder
) -> None:
    settings = sync_settings.model_copy(
        update={"sync_lease_s": LEASE_S, "sync_lease_drain_s": DRAIN_S}
    )
    prefix = settings.table_key_prefix
    maps = LoaderMaps(edge)
    service = SyncService(settings, maps, client, pop="a", node="a-edge1")
    with Writer(client, prefix) as writer, Running(service) as sync:
        wait_for("the table", lambda: sync.state.tiers[0].version >= 2)
        _, table = redis_image(client, prefix)
        assert np.array_equal(maps.read(0), table)
        away = Flag.HAS_SECONDARY | Flag.INTER_POP | Flag.AWAY
        assert away in syn_flags(edge)  # some new connections leave the PoP

        writer.renewing.clear()
        stopped = time.monotonic()
        wait_for("the lease cut", lambda: sync.state.tiers[0].lease is Lease.EXPIRED, 5.0)
        assert time.monotonic() - stopped < LEASE_S + 1.0  # the poll is 0.1 s
        assert np.array_equal(maps.read(0), local_image(table, Lease.EXPIRED))
        assert sync.state.lease_expiries == 1
        assert not any(f & Flag.AWAY for f in syn_flags(edge))  # every new connection stays
        assert Flag.HAS_SECONDARY | Flag.INTER_POP in syn_flags(edge)  # second chance kept

        wait_for("the drain", lambda: sync.state.tiers[0].lease is Lease.LOCAL, 5.0)
        assert np.array_equal(maps.read(0), local_image(table, Lease.LOCAL))
        assert not any(f & Flag.INTER_POP for f in syn_flags(edge))
        assert sync.state.lease_expiries == 1

        writer.renewing.set()
        wait_for("the renewal", lambda: sync.state.tiers[0].lease is Lease.LIVE, 5.0)
        assert np.array_equal(maps.read(0), table)
        assert away in syn_flags(edge)


def test_a_sync_without_redis_cuts_what_the_maps_hold(
    sync_settings: SyncSettings, client: redis.Redis[bytes], edge: Forwarder
) -> None:
    """The controller and Redis are gone and the sync restarts: it cannot know how old the
    table is, so it grants one lease from its start, then cuts the maps' own content."""
    settings = sync_settings.model_copy(update={"sync_lease_s": LEASE_S, "sync_lease_drain_s": 60})
    TableStore(client, prefix=settings.table_key_prefix).write(
        mixed_table(BITS), Header("a", 0, 1, 1, BITS, time.time())
    )
    maps = LoaderMaps(edge)
    with Running(SyncService(settings, maps, client, pop="a", node="a-edge1")) as first:
        wait_for("the table", lambda: first.state.tiers[0].version == 1)
    table = maps.read(0)
    dead = redis_client(settings.model_copy(update={"redis_url": "rediss://127.0.0.1:1/0"}))
    with Running(SyncService(settings, maps, dead, pop="a", node="a-edge1")) as second:
        wait_for("failed Redis reads", lambda: second.state.redis_failures >= 1, 5.0)
        assert second.state.tiers[0].lease is Lease.LIVE
        assert np.array_equal(maps.read(0), table)  # fail static, within the lease
        wait_for("the lease cut", lambda: second.state.tiers[0].lease is Lease.EXPIRED, 5.0)
        assert np.array_equal(maps.read(0), local_image(table, Lease.EXPIRED))
        assert second.state.lease_expiries >= 1  # every tier: none was renewed
