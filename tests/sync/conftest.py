"""Sync test fixtures: a Redis client whose keys are cleaned up, and sync settings under a
private key prefix and topic prefix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from popshift.credentials import RedisAccess
from services.forwarder.sync import redis_client
from services.forwarder.sync_settings import SyncSettings


@pytest.fixture
def client(
    redis_access: RedisAccess, unique: str, sync_settings: SyncSettings
) -> Iterator[redis.Redis[bytes]]:
    c = redis_client(sync_settings.model_copy(update={"redis_url": redis_access.url}))
    yield c
    try:
        for key in c.scan_iter(f"{unique}:*"):
            c.delete(key)
    finally:
        c.close()


@pytest.fixture
def sync_settings(unique: str) -> SyncSettings:
    return SyncSettings(
        topic_prefix=unique,
        table_key_prefix=f"{unique}:table",
        sync_kafka=False,
        sync_poll_s=0.1,
        sync_stats_interval_s=0.5,
        sync_backoff_initial_s=0.1,
        sync_backoff_max_s=0.5,
        sync_redis_timeout_s=0.5,
        sync_lease_s=0.0,  # tables written at t=1.0 would be long expired; test_lease sets one
    )
