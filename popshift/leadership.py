"""One holder at a time: a Redis lock with a rising epoch, for the policy engine and the table
writers (docs/failure.md#one-writer-per-thing).

The lock is one key whose value names its holder and which expires after ``ttl_s`` unless the
holder renews it; every change of holder raises the epoch (a second key), never below a floor
the caller knows from elsewhere (the highest epoch on policies.v1), so a Redis that came back
empty cannot hand out an epoch that was already used. Taking and renewing are one Lua script,
so two candidates never both win.

What the epoch fences: the engine stamps it on every policy and writers refuse a deposed
engine's newer policies; a table writer's Redis writes check, in the same script as the write,
that it still holds its PoP's lock (``fence_args``), so a writer that lost the lock (paused,
partitioned, its lock expired and taken) cannot overwrite its successor's tables.

While Redis does not answer, a holder keeps its role (a Redis outage must not stop the control
plane): if another process took the lock meanwhile, the fencing above makes the old holder's
word void, and it stands down as soon as Redis tells it so.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import redis

log = logging.getLogger("popshift.leadership")

ENGINE_LEADER_KEY = "popshift:policy:leader"
"""The policy engines' lock (POPSHIFT_POLICY_LEADER_KEY); the table writers read its epoch."""

_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then
  return -1
end
local epoch = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[2], epoch)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return epoch
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def epoch_key(key: str) -> str:
    """Where the epoch of the lock ``key`` is kept."""
    return f"{key}:epoch"


def read_epoch(client: redis.Redis[bytes], key: str) -> int | None:
    """The current epoch of the lock ``key``: None when it cannot be read (Redis away, or
    empty after a restart until the next holder takes the lock), so a caller can tell "not
    known" from an epoch."""
    try:
        raw = client.get(epoch_key(key))
    except redis.RedisError:
        return None
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def default_holder() -> str:
    """host:pid: unique per process, so a restarted process waits for its old lock to expire
    (set a stable ``POPSHIFT_INSTANCE_ID`` per unit to take it back at once)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """This process's claim on one lock: :meth:`hold` on every tick, act only while it returns
    an epoch."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        key: str,
        holder: str,
        ttl_s: float,
    ) -> None:
        self.key = key
        self.epoch_key = epoch_key(key)
        self.holder = holder
        self.ttl_s = ttl_s
        self.epoch: int | None = None  # while this process holds the lock
        self.changes = 0  # times this process took the lock or lost it
        self.unreachable = 0  # renewals that failed because Redis did not answer
        self._script: Any = client.register_script(_HOLD)
        self._release: Any = client.register_script(_RELEASE)
        self._client = client

    def hold(self, floor: int = 0) -> int | None:
        """Take or renew the lock: the epoch while this process holds it, else None."""
        try:
            result = int(
                self._script(
                    keys=[self.key, self.epoch_key],
                    args=[self.holder, max(1, int(self.ttl_s * 1000)), floor],
                )
            )
        except redis.RedisError as exc:
            self.unreachable += 1
            if self.unreachable <= 3 or self.unreachable % 60 == 0:
                log.warning("%s: cannot renew (Redis: %s), going on as before", self.key, exc)
            return self.epoch  # fenced if someone else took over meanwhile
        if result < 0:
            if self.epoch is not None:
                log.error("%s: lost to %s, standing down", self.key, self.current_holder())
            self._set(None)
            return None
        if result != self.epoch:
            log.warning("%s: held by %s, epoch %d", self.key, self.holder, result)
            self._set(result)
        return result

    def _set(self, epoch: int | None) -> None:
        self.changes += 1
        self.epoch = epoch

    def current_holder(self) -> str | None:
        """Who holds the lock now (None: nobody, or Redis does not answer)."""
        try:
            raw = self._client.get(self.key)
        except redis.RedisError:
            return None
        return raw.decode() if raw is not None else None

    def release(self) -> None:
        """Give the lock up at a clean stop, so a standby takes over without waiting."""
        if self.epoch is None:
            return
        try:
            self._release(keys=[self.key], args=[self.holder])
        except redis.RedisError as exc:
            log.warning("%s: could not release the lock (it expires by itself): %s", self.key, exc)
        self._set(None)

    def fence_args(self) -> tuple[str, str, int]:
        """For a write script that must not land while another process holds the lock (and
        takes it back when nobody does): key, holder, TTL in ms."""
        return self.key, self.holder, max(1, int(self.ttl_s * 1000))


def wait_for_lock(leadership: Leadership, stop: threading.Event, interval_s: float) -> bool:
    """Wait as the standby until this process holds the lock: True, or False if stopped first."""
    said: str | None = ""
    while not stop.is_set():
        if leadership.hold() is not None:
            return True
        holder = leadership.current_holder()
        if holder != said:
            log.warning("%s: standby, the lock is held by %s", leadership.key, holder or "nobody")
            said = holder
        stop.wait(interval_s)
    return False
