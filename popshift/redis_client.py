"""One way to open Redis for every service: TLS and an ACL user, short timeouts, no hidden
client-side retries.

redis-py's default retries a dead server with backoff for seconds inside one call; our services
have their own retry loops (and keep their last good state meanwhile), so a call must fail fast.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from popshift.credentials import RedisAccess


def connect(access: RedisAccess, timeout_s: float = 1.0) -> redis.Redis[bytes]:
    return redis.Redis.from_url(
        access.url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        **access.client_kwargs(),
    )
