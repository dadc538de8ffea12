"""The forwarding-table bucket: its one Python type and its one flag encoding.

The table writer builds tables of :class:`Bucket`, the Redis record (schemas/redis-table.md) and
the BPF map (``struct bucket``) both carry its flags as the same :class:`Flag` byte, and the GUE
header carries the low four bits (schemas/gue.md). What a bucket means: docs/forwarding-tables.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Flag(enum.IntFlag):
    """enum popshift_flags (services/forwarder/bpf/consts.h), checked by test_layout."""

    HAS_SECONDARY = 0x01
    INTER_POP = 0x02
    """The secondary is another PoP's ingress; received traffic never goes there."""
    AWAY = 0x04
    """New connections go to the secondary; else they stay with the primary."""
    FROM_PEER = 0x08
    """GUE only: the packet came from another PoP and never leaves this one again."""
    VALID = 0x80
    """Bucket only: the entry is set (a zeroed map entry is not)."""


_VALID, _HAS, _INTER, _AWAY = (
    int(f) for f in (Flag.VALID, Flag.HAS_SECONDARY, Flag.INTER_POP, Flag.AWAY)
)  # plain ints: IntFlag arithmetic costs a microsecond, and tables have 65,536 buckets


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket of a PoP x tier table; plain and frozen, so 65,536 of them are cheap.

    Addresses are canonical text (``str(ipaddress.ip_address(...))``), as in the Redis header.
    ``modified_at`` orders the writer's changes (least recently modified first); the data plane
    ignores it.
    """

    primary: str
    secondary: str | None = None
    inter_pop: bool = False
    away: bool = False
    secondary_pop: int = 0
    modified_at: float = 0.0

    @property
    def flags(self) -> int:
        """The flag byte as Redis and the BPF map hold it."""
        return (
            _VALID
            | (_HAS if self.secondary is not None else 0)
            | (_INTER if self.inter_pop else 0)
            | (_AWAY if self.away else 0)
        )
