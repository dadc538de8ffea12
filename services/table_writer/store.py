"""Redis layout of the forwarding tables, written so a reader never sees half a table.

Keys, per PoP and tier (one Redis per PoP in production, so no cluster hash tags):

    popshift:table:{pop}:{tier}:v{version}   one blob (codec.py): header + 2^N 16-byte records
    popshift:table:{pop}:{tier}:current      the current version number, as decimal text

A write is one Lua script (atomic): refuse if another writer holds the PoP's lock (when the
store is fenced: ``popshift:table:{pop}:writer``, popshift/leadership.py; a lock nobody holds,
as after Redis came back empty, is taken back by the write) and unless the new version
is higher than ``current``, SET the version key (~1 MiB at N=16), point ``current`` at it, and
give the version it replaced a TTL of ``retain_s`` so that a reader that just read the old
pointer can still fetch it. A refused write leaves nothing behind. A reader does GET current,
then GET v{current}.
"""

from __future__ import annotations

from typing import Any

import redis

from services.table_writer.codec import Header, decode, encode
from services.table_writer.table import Table

PREFIX = "popshift:table"

_WRITE = """
if ARGV[5] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[5] then
    return redis.error_reply('FENCED the lock ' .. KEYS[3] .. ' is held by ' .. holder)
  end
  if not holder then  -- expired, or a Redis back empty: nobody else holds it, take it back
    redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[6])
  end
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new <= cur then
  return redis.error_reply('STALE current=' .. cur .. ' new=' .. new)
end
redis.call('SET', KEYS[2], ARGV[4])
redis.call('SET', KEYS[1], ARGV[1])
if cur > 0 then
  redis.call('PEXPIRE', ARGV[3] .. cur, ARGV[2])
end
return cur
"""


class StaleVersion(Exception):
    """Redis already holds this version or a newer one: another writer got there first."""


class Fenced(Exception):
    """This writer no longer holds its PoP's lock: another writer took over (or Redis lost the
    lock); nothing was written."""


def writer_lock_key(pop: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:{pop}:writer"


def version_key(pop: str, tier: int, version: int, prefix: str = PREFIX) -> str:
    return f"{prefix}:{pop}:{tier}:v{version}"


def current_key(pop: str, tier: int, prefix: str = PREFIX) -> str:
    return f"{prefix}:{pop}:{tier}:current"


class TableStore:
    """Versioned tables of one PoP in Redis."""

    def __init__(
        self,
        client: redis.Redis[bytes],
        retain_s: float = 60.0,
        prefix: str = PREFIX,
        fence: tuple[str, str, int] | None = None,
    ):
        """``fence``: (lock key, holder, TTL ms) that every write checks (Leadership.fence_args)."""
        self._redis = client
        self.prefix = prefix
        self._fence = fence or ("", "", 0)
        self._retain_ms = int(retain_s * 1000)
        self._write: Any = client.register_script(_WRITE)

    def write(self, table: Table, header: Header) -> None:
        """Store ``table`` as ``header.version`` and make it current, atomically for readers."""
        blob = encode(table, header)
        pop, tier, version = header.pop, header.tier, header.version
        try:
            self._write(
                keys=[
                    current_key(pop, tier, self.prefix),
                    version_key(pop, tier, version, self.prefix),
                    self._fence[0] or current_key(pop, tier, self.prefix),
                ],
                args=[
                    version,
                    self._retain_ms,
                    f"{self.prefix}:{pop}:{tier}:v",
                    blob,
                    self._fence[1],
                    self._fence[2],
                ],
            )
        except redis.ResponseError as exc:
            if "STALE" in str(exc):
                raise StaleVersion(str(exc)) from exc
            if "FENCED" in str(exc):
                raise Fenced(str(exc)) from exc
            raise

    def current_version(self, pop: str, tier: int) -> int:
        raw = self._redis.get(current_key(pop, tier, self.prefix))
        return int(raw) if raw is not None else 0

    def read(self, pop: str, tier: int, version: int | None = None) -> tuple[Header, Table] | None:
        """The current table (or a given version), or None when there is none."""
        if version is None:
            version = self.current_version(pop, tier)
            if version == 0:
                return None
        blob = self._redis.get(version_key(pop, tier, version, self.prefix))
        if blob is None:
            return None
        return decode(bytes(blob))
