"""The byte layout of one table version in Redis: one blob, so a write is one SET.

    offset  size  field
    0       4     magic b"PSTB"
    4       2     format version (1), little-endian
    6       4     header length H, little-endian
    10      H     header: UTF-8 JSON {pop, tier, version, policy_version, bits, written_at,
                  shares: {destination: fraction}, addresses: [address, ...]}
    10+H    16*2^N  one record per bucket, little-endian:
                  u16 primary (index into addresses), u16 secondary (index, 0xFFFF = none),
                  u16 secondary_pop, u8 flags (bit 0 inter_pop, bit 1 direction away), u8 0,
                  f64 modified_at (seconds)

At N=16 that is 1 MiB plus the header; numpy packs and unpacks it in a few milliseconds, and a
reader (the forwarder sync) can diff two versions vectorised with :func:`decode_records`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.messages import Direction
from services.table_writer.table import Bucket, Table

MAGIC = b"PSTB"
FORMAT = 1
NO_ADDRESS = 0xFFFF
FLAG_INTER_POP = 0x01
FLAG_AWAY = 0x02
RECORD = np.dtype(
    [
        ("primary", "<u2"),
        ("secondary", "<u2"),
        ("secondary_pop", "<u2"),
        ("flags", "u1"),
        ("pad", "u1"),
        ("modified_at", "<f8"),
    ]
)
_PREFIX = struct.Struct("<4sHI")


class BadTableBlob(ValueError):
    """Bytes that are not a table this code can read."""


@dataclass(frozen=True)
class Header:
    pop: str
    tier: int
    version: int
    policy_version: int
    bits: int
    written_at: float
    shares: dict[str, float] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)


def encode(table: Table, header: Header) -> bytes:
    """Pack ``table``; ``header.addresses`` is filled from the table."""
    index: dict[str, int] = {}
    for b in table:
        index.setdefault(b.primary, len(index))
        if b.secondary is not None:
            index.setdefault(b.secondary, len(index))
    if len(index) >= NO_ADDRESS:
        raise ValueError(f"{len(index)} distinct addresses do not fit a u16 index")
    records = np.zeros(len(table), dtype=RECORD)
    records["primary"] = [index[b.primary] for b in table]
    records["secondary"] = [
        NO_ADDRESS if b.secondary is None else index[b.secondary] for b in table
    ]
    records["secondary_pop"] = [b.secondary_pop for b in table]
    records["flags"] = [
        (FLAG_INTER_POP if b.inter_pop else 0) | (FLAG_AWAY if b.away else 0) for b in table
    ]
    records["modified_at"] = [b.modified_at for b in table]
    meta = dict(header.__dict__, addresses=list(index))
    head = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    return _PREFIX.pack(MAGIC, FORMAT, len(head)) + head + records.tobytes()


def decode_records(blob: bytes) -> tuple[Header, npt.NDArray[Any]]:
    """The header and the raw records (for vectorised readers)."""
    if len(blob) < _PREFIX.size:
        raise BadTableBlob("too short")
    magic, fmt, head_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC or fmt != FORMAT:
        raise BadTableBlob(f"not a popshift table (magic {magic!r}, format {fmt})")
    start = _PREFIX.size + head_len
    try:
        header = Header(**json.loads(blob[_PREFIX.size : start]))
    except (ValueError, TypeError) as exc:
        raise BadTableBlob(f"bad header: {exc}") from exc
    body = blob[start:]
    if len(body) != RECORD.itemsize << header.bits:
        raise BadTableBlob(f"{len(body)} record bytes for 2^{header.bits} buckets")
    return header, np.frombuffer(body, dtype=RECORD)


def decode(blob: bytes) -> tuple[Header, Table]:
    header, records = decode_records(blob)
    addresses = header.addresses
    table: Table = []
    for p, s, pop, flags, _pad, at in records.tolist():
        table.append(
            Bucket(
                primary=addresses[p],
                secondary=None if s == NO_ADDRESS else addresses[s],
                inter_pop=bool(flags & FLAG_INTER_POP),
                secondary_pop=pop,
                direction=Direction.AWAY if flags & FLAG_AWAY else Direction.BACK,
                modified_at=at,
            )
        )
    return header, table
