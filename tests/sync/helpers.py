"""Tables, blobs and an in-memory stand-in for the BPF maps, shared by the sync tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.bucket import Bucket, Flag
from services.forwarder.layout import BUCKET_DTYPE, MapBucket, Verdict, addr16
from services.forwarder.loader import Count
from services.forwarder.sync import Counters, Image
from services.table_writer.codec import NO_ADDRESS, Header, encode
from services.table_writer.table import (
    Peer,
    Server,
    Table,
    apply_policy,
    new_table,
    rebalance_primaries,
)

PEERS = {"b": Peer("b", 2, "10.100.2.1"), "c": Peer("c", 3, "2001:db8:c::1")}
SERVERS = [Server("192.0.97.1", 4.0), Server("192.0.97.2", 4.0), Server("2001:db8:a::3", 8.0)]


def table(bits: int, shares: Mapping[str, float] | None = None, now: float = 1.0) -> Table:
    t = new_table(SERVERS, bits, 0.0)
    return apply_policy(t, shares or {}, PEERS, now, 60.0) if shares else t


def mixed_table(bits: int) -> Table:
    """Every kind of bucket: local, intra-PoP second chance (a server left), inter-PoP away
    (to b and c) and inter-PoP draining (b's share went down)."""
    t = rebalance_primaries(new_table(SERVERS, bits, 0.0), SERVERS[:2], 1.0)
    t = apply_policy(t, {"b": 0.25, "c": 0.1}, PEERS, 2.0, 60.0)
    return apply_policy(t, {"b": 0.1, "c": 0.1}, PEERS, 3.0, 60.0)


def blob(t: Table, version: int, bits: int, pop: str = "a", tier: int = 0) -> bytes:
    return encode(t, Header(pop, tier, version, version, bits, float(version)))


def entry_bytes(e: Bucket | None) -> bytes:
    """What the loader writes for one entry (its apply_table_diff, element by element)."""
    b = MapBucket()
    if e is not None:
        b.primary[:] = addr16(e.primary)
        b.secondary[:] = addr16(e.secondary)
        b.secondary_pop = e.secondary_pop
        b.flags = e.flags
    return bytes(b)


def entries(header: Header, records: npt.NDArray[Any], indices: Iterable[int]) -> dict[int, Bucket]:
    """The loader's entries for ``indices``: the slow per-entry path the image must agree with."""
    ips = header.addresses
    out: dict[int, Bucket] = {}
    for i in indices:
        p, s, pop, flags, _pad, _at = records[i].tolist()
        out[int(i)] = Bucket(
            primary=ips[p],
            secondary=None if s == NO_ADDRESS else ips[s],
            inter_pop=bool(flags & Flag.INTER_POP),
            away=bool(flags & Flag.AWAY),
            secondary_pop=pop,
        )
    return out


class FakeMaps:
    """TableMaps in memory: what a node's maps would hold, and every write made to them."""

    def __init__(self, bits: int, tiers: int = 4) -> None:
        self.buckets = 1 << bits
        self.tiers = tiers
        self.images = [np.zeros(self.buckets, dtype=BUCKET_DTYPE) for _ in range(tiers)]
        self.writes: list[tuple[int, int]] = []
        self.reads = 0
        self.packets: dict[int | None, dict[Verdict, Count]] = {}

    def write(self, tier: int, indices: npt.NDArray[np.intp], rows: Image) -> None:
        self.images[tier][indices] = rows
        self.writes.append((tier, len(indices)))

    def read(self, tier: int) -> Image:
        self.reads += 1
        return self.images[tier].copy()

    def counters(self) -> Counters:
        return self.packets
