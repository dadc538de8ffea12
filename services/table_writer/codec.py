"""One table version in Redis as one blob, so a write is one SET (schemas/redis-table.md).

The blob is a fixed prefix, a JSON header and one 16-byte record per bucket; the record's flag
byte is the BPF bucket's (:class:`schemas.bucket.Flag`), so a reader copies it as it is. At N=16
that is 1 MiB plus the header; numpy packs and unpacks it in a few milliseconds, and a reader
(the forwarder sync) can diff two versions vectorised with :func:`decode_records`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.bucket import Bucket, Flag
from services.table_writer.table import Table

MAGIC = b"PSTB"
FORMAT = 2
"""1 had its own flag bits (inter-PoP 0x01, away 0x02); 2 has the BPF bucket's."""
NO_ADDRESS = 0xFFFF
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
BLOB_PREFIX = struct.Struct("<4sHI")
"""magic, format, header length H; the JSON header follows, then the records."""


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
    records["flags"] = [b.flags for b in table]
    records["modified_at"] = [b.modified_at for b in table]
    meta = dict(header.__dict__, addresses=list(index))
    head = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    return BLOB_PREFIX.pack(MAGIC, FORMAT, len(head)) + head + records.tobytes()


def decode_records(blob: bytes) -> tuple[Header, npt.NDArray[Any]]:
    """The header and the raw records (for vectorised readers)."""
    if len(blob) < BLOB_PREFIX.size:
        raise BadTableBlob("too short")
    magic, fmt, head_len = BLOB_PREFIX.unpack_from(blob)
    if magic != MAGIC or fmt != FORMAT:
        raise BadTableBlob(f"not a popshift table (magic {magic!r}, format {fmt})")
    start = BLOB_PREFIX.size + head_len
    try:
        header = Header(**json.loads(blob[BLOB_PREFIX.size : start]))
    except (ValueError, TypeError) as exc:
        raise BadTableBlob(f"bad header: {exc}") from exc
    body = blob[start:]
    if len(body) != RECORD.itemsize << header.bits:
        raise BadTableBlob(f"{len(body)} record bytes for 2^{header.bits} buckets")
    return header, np.frombuffer(body, dtype=RECORD)


def decode(blob: bytes) -> tuple[Header, Table]:
    """The header and the table as :class:`Bucket` s (the writer adopting what Redis holds)."""
    header, records = decode_records(blob)
    addresses = header.addresses
    table: Table = []
    for p, s, pop, flags, _pad, at in records.tolist():
        table.append(
            Bucket(
                primary=addresses[p],
                secondary=None if s == NO_ADDRESS else addresses[s],
                inter_pop=bool(flags & Flag.INTER_POP),
                away=bool(flags & Flag.AWAY),
                secondary_pop=pop,
                modified_at=at,
            )
        )
    return header, table
