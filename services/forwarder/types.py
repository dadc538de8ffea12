"""What a node's maps hold, as plain Python: the control plane's types, free of scapy.

The loader writes them to the maps and model.py (the test oracle) forwards by them; the buckets
themselves are :class:`schemas.bucket.Bucket`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from schemas.bucket import Bucket
from services.forwarder.layout import BUCKET_BITS, TIERS, IpNetwork, PeerKind, addr16


@dataclass(frozen=True)
class NodeConfig:
    """struct config: who this node is and how it sends."""

    pop_id: int
    self4: ipaddress.IPv4Address | None = None
    self6: ipaddress.IPv6Address | None = None
    nexthop_mac: bytes = bytes(6)
    mtu: int = 1500
    fib: bool = False
    syncookies: bool = False

    def self_addr(self, v6: bool) -> bytes:
        return addr16(self.self6) if v6 else addr16(self.self4)


@dataclass
class TableState:
    """Everything in the maps besides the config: VIPs, tiers, blocklist, peers, buckets."""

    bucket_bits: int = BUCKET_BITS
    tiers: int = TIERS
    vips: dict[IpNetwork, int] = field(default_factory=dict)
    tier_flags: dict[int, int] = field(default_factory=dict)
    blocklist: set[IpNetwork] = field(default_factory=set)
    peers: dict[IpNetwork, tuple[PeerKind, int]] = field(default_factory=dict)
    table: dict[tuple[int, int], Bucket] = field(default_factory=dict)
    """(tier, bucket index) -> bucket; a missing key is a cleared bucket."""
