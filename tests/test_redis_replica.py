"""A PoP's syncs read their tables from a Redis read replica (deploy/cluster/up.sh starts one
per PoP) while the table writer writes the primary: the real replica of the local Redis,
started by deploy/local/redis-start.sh, and the sync's own client (services/forwarder/sync.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from popshift import redis_client
from popshift.credentials import RedisAccess
from popshift.settings import Settings
from services.forwarder.sync import redis_client as sync_redis_client
from services.forwarder.sync_settings import SyncSettings
from tests.conftest import LOCAL

pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def replica(redis_access: RedisAccess, settings: Settings, tmp_path: Path) -> Iterator[str]:
    primary_port = redis_access.url.rsplit(":", 1)[1].split("/")[0]
    port = _free_port()
    env = os.environ | {
        "POPSHIFT_STATE_DIR": str(tmp_path / "replica"),
        "POPSHIFT_SECRETS_DIR": settings.secrets_dir,  # the primary's users and certificate
        "POPSHIFT_REDIS_PORT": str(port),
        "POPSHIFT_REDIS_REPLICAOF": f"127.0.0.1 {primary_port}",
    }
    subprocess.run(["bash", str(LOCAL / "redis-start.sh")], env=env, check=True, timeout=60)
    try:
        yield f"rediss://127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(LOCAL / "redis-stop.sh")], env=env, check=False, timeout=60)


def test_a_sync_reads_its_pops_tables_from_the_replica(
    replica: str, redis_access: RedisAccess
) -> None:
    key = f"popshift:table:a:replica-probe-{uuid.uuid4().hex[:8]}"
    primary = redis_client.connect(redis_access)
    primary.set(key, b"v1")
    sync = sync_redis_client(SyncSettings(principal="sync-a", sync_redis_url=replica))
    assert sync.connection_pool.connection_kwargs["port"] == int(replica.rsplit(":", 1)[1])
    end = time.monotonic() + 10.0
    while sync.get(key) != b"v1":  # replication is asynchronous: milliseconds
        assert time.monotonic() < end, "the replica never had the primary's write"
        time.sleep(0.05)
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)read only|readonly"):
        redis_client.connect(
            RedisAccess(replica, redis_access.username, redis_access.password, redis_access.ca_file)
        ).set(key, b"v2")  # even the admin cannot write a replica: only the primary is written
    primary.delete(key)
