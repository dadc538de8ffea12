"""Redis layout of the forwarding tables, written so a reader never sees half a table.

Keys, per PoP and tier (one Redis per PoP in production, so no cluster hash tags):

    popshift:table:{pop}:{tier}:v{version}   one blob (codec.py): header + 2^N 16-byte records
    popshift:table:{pop}:{tier}:current      the current version number, as decimal text

A write is: SET the version key (one command, ~1 MiB at N=16), then a Lua script flips
``current`` only if the new version is higher and its blob exists, and gives the version it
replaced a TTL of ``retain_s`` so that a reader that just read the old pointer can still fetch
it. A reader does GET current, then GET v{current}.
"""

from __future__ import annotations

from typing import Any

import redis

from services.table_writer.codec import Header, decode, encode
from services.table_writer.table import Table

PREFIX = "popshift:table"

_FLIP = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new <= cur then
  return redis.error_reply('STALE current=' .. cur .. ' new=' .. new)
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('MISSING ' .. KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PERSIST', KEYS[2])
if cur > 0 then
  redis.call('PEXPIRE', ARGV[3] .. cur, ARGV[2])
end
return cur
"""


class StaleVersion(Exception):
    """Redis already holds this version or a newer one: another writer got there first."""


def version_key(pop: str, tier: int, version: int) -> str:
    return f"{PREFIX}:{pop}:{tier}:v{version}"


def current_key(pop: str, tier: int) -> str:
    return f"{PREFIX}:{pop}:{tier}:current"


class TableStore:
    """Versioned tables of one PoP in Redis."""

    def __init__(
        self, client: redis.Redis[bytes], retain_s: float = 60.0, orphan_ttl_s: float = 600.0
    ):
        self._redis = client
        self._retain_ms = int(retain_s * 1000)
        # A blob whose flip never happened (crash in between) expires on its own.
        self._orphan_ms = int(orphan_ttl_s * 1000)
        self._flip: Any = client.register_script(_FLIP)

    def write(self, table: Table, header: Header) -> None:
        """Store ``table`` as ``header.version`` and make it current, atomically for readers."""
        blob = encode(table, header)
        pop, tier, version = header.pop, header.tier, header.version
        self._redis.set(version_key(pop, tier, version), blob, px=self._orphan_ms)
        try:
            self._flip(
                keys=[current_key(pop, tier), version_key(pop, tier, version)],
                args=[version, self._retain_ms, f"{PREFIX}:{pop}:{tier}:v"],
            )
        except redis.ResponseError as exc:
            if "STALE" in str(exc):
                raise StaleVersion(str(exc)) from exc
            raise

    def current_version(self, pop: str, tier: int) -> int:
        raw = self._redis.get(current_key(pop, tier))
        return int(raw) if raw is not None else 0

    def read(self, pop: str, tier: int, version: int | None = None) -> tuple[Header, Table] | None:
        """The current table (or a given version), or None when there is none."""
        if version is None:
            version = self.current_version(pop, tier)
            if version == 0:
                return None
        blob = self._redis.get(version_key(pop, tier, version))
        if blob is None:
            return None
        return decode(bytes(blob))
