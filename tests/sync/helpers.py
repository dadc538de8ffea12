"""Tables, blobs and an in-memory stand-in for the BPF maps, shared by the sync tests."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from services.forwarder.layout import Bucket as MapBucket
from services.forwarder.layout import Verdict, addr16
from services.forwarder.loader import Count
from services.forwarder.model import BucketEntry
from services.forwarder.sync import BUCKET_DTYPE, Counters, Image
from services.table_writer.codec import Header, encode
from services.table_writer.table import Peer, Server, Table, apply_policy, new_table

PEERS = {"b": Peer("b", 2, "10.100.2.1"), "c": Peer("c", 3, "2001:db8:c::1")}
SERVERS = [Server("192.0.97.1", 4.0), Server("192.0.97.2", 4.0), Server("2001:db8:a::3", 8.0)]


def table(bits: int, shares: Mapping[str, float] | None = None, now: float = 1.0) -> Table:
    t = new_table(SERVERS, bits, 0.0)
    return apply_policy(t, shares or {}, PEERS, now, 60.0) if shares else t


def blob(t: Table, version: int, bits: int, pop: str = "a", tier: int = 0) -> bytes:
    return encode(t, Header(pop, tier, version, version, bits, float(version)))


def entry_bytes(e: BucketEntry | None) -> bytes:
    """What the loader writes for one entry (its apply_table_diff, element by element)."""
    b = MapBucket()
    if e is not None:
        b.primary[:] = addr16(e.primary)
        b.secondary[:] = addr16(e.secondary)
        b.secondary_pop = e.secondary_pop
        b.flags = e.flags
    return bytes(b)


class FakeMaps:
    """TableMaps in memory: what a node's maps would hold, and every write made to them."""

    def __init__(self, bits: int, tiers: int = 4) -> None:
        self.buckets = 1 << bits
        self.tiers = tiers
        self.images = [np.zeros(self.buckets, dtype=BUCKET_DTYPE) for _ in range(tiers)]
        self.writes: list[tuple[int, int]] = []
        self.reads = 0
        self.packets: dict[int | None, dict[Verdict, Count]] = {}

    def write(self, tier: int, diff: Mapping[int, BucketEntry]) -> None:
        raw = self.images[tier].view(np.uint8).reshape(self.buckets, -1)
        for i, e in diff.items():
            raw[i] = np.frombuffer(entry_bytes(e), np.uint8)
        self.writes.append((tier, len(diff)))

    def read(self, tier: int) -> Image:
        self.reads += 1
        return self.images[tier].copy()

    def counters(self) -> Counters:
        return self.packets
