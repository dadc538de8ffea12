"""Packets and node setups shared by the forwarder tests and the benchmarks (scapy-built).

Only tests and benches import this module (like model.py, it needs scapy); the product never
does, which tests/sync/test_core.py checks.
"""

from __future__ import annotations

import ipaddress as ia
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from schemas.bucket import Bucket
from services.forwarder.layout import GUE_PORT, PeerKind, addr16
from services.forwarder.model import Gue
from services.forwarder.types import NodeConfig, TableState

CLIENT_MAC = "02:00:00:00:00:01"
EDGE_MAC = "02:00:00:00:00:02"
ROUTER_MAC = bytes.fromhex("020000000099")
BUCKET_BITS = 4

VIP4, VIP6 = "192.0.2.10", "2001:db8::10"
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:1::7"
EDGE4, EDGE6 = "10.0.0.1", "fd00::1"
SERVER4, SERVER6 = "10.0.1.1", "fd00:1::1"
SERVER2_4, SERVER2_6 = "10.0.1.2", "fd00:1::2"
REMOTE4, REMOTE6 = "10.7.0.1", "fd07::1"  # a server in PoP 7
PEER_POP_EDGE4 = "10.8.0.1"  # edge of peer PoP 8
POP = 3

EDGE_CFG = NodeConfig(
    pop_id=POP,
    self4=ia.IPv4Address(EDGE4),
    self6=ia.IPv6Address(EDGE6),
    nexthop_mac=ROUTER_MAC,
    mtu=1500,
)
SERVER_CFG = NodeConfig(
    pop_id=POP,
    self4=ia.IPv4Address(SERVER4),
    self6=ia.IPv6Address(SERVER6),
    nexthop_mac=ROUTER_MAC,
    mtu=1500,
)


def state(entry: Bucket | None, **kw: Any) -> TableState:
    """VIPs in tiers 0 (IPv4) and 1 (IPv6), every bucket of every tier set to `entry`."""
    st = TableState(
        bucket_bits=BUCKET_BITS,
        vips={
            ia.ip_network("192.0.2.0/24"): 0,
            ia.ip_network("2001:db8::/64"): 1,
            ia.ip_network(f"{VIP4}/32"): 0,
            ia.ip_network(f"{VIP6}/128"): 1,
        },
        peers={
            ia.ip_network("10.0.0.0/16"): (PeerKind.LOCAL, POP),
            ia.ip_network("fd00::/16"): (PeerKind.LOCAL, POP),
            ia.ip_network("10.7.0.0/16"): (PeerKind.REMOTE, 7),
            ia.ip_network("10.8.0.0/16"): (PeerKind.REMOTE, 8),
        },
        **kw,
    )
    if entry is not None:
        st.table = {(t, i): entry for t in range(4) for i in range(1 << BUCKET_BITS)}
    return st


def client(
    v6: bool = False,
    proto: str = "tcp",
    flags: str = "S",
    sport: int = 40000,
    dport: int = 443,
    payload: bytes = b"",
    src: str | None = None,
    dst: str | None = None,
) -> Packet:
    """A client packet to the VIP as it reaches the edge."""
    l3: Packet = (
        IPv6(src=src or CLIENT6, dst=dst or VIP6)
        if v6
        else IP(src=src or CLIENT4, dst=dst or VIP4, flags="DF")
    )
    l4: Packet = (
        TCP(sport=sport, dport=dport, flags=flags)
        if proto == "tcp"
        else (UDP(sport=sport, dport=dport))
    )
    return Ether(src=CLIENT_MAC, dst=EDGE_MAC) / l3 / l4 / Raw(payload)


def gue(
    inner: Packet,
    *,
    outer_src: str = EDGE4,
    outer_dst: str = SERVER4,
    flags: int = 0,
    secondary: str | None = None,
    hop_index: int = 0,
    hop_count: int | None = None,
    tier: int = 0,
    landing_pop: int = POP,
    secondary_pop: int = 0,
    sport: int = 50000,
    **overrides: int,
) -> Packet:
    """A GUE packet as an edge (or a hostile sender) would put on the wire."""
    l3 = bytes(inner)[14:]
    inner_v6 = bytes(inner)[12:14] == b"\x86\xdd"
    g = Gue(
        ver_c_hlen=7,
        proto=41 if inner_v6 else 4,
        flags=0,
        priv_version=1,
        priv_flags=flags,
        hop_index=hop_index,
        hop_count=(1 if secondary else 0) if hop_count is None else hop_count,
        landing_pop=landing_pop,
        secondary_pop=secondary_pop,
        tier=tier,
        secondary=addr16(ia.ip_address(secondary)) if secondary else bytes(16),
    )
    if "gue_flags" in overrides:  # the GUE base header's flags, not the private flags
        overrides["flags"] = overrides.pop("gue_flags")
    if overrides:
        g = Gue(**{**g.__dict__, **overrides})
    outer: Packet = (
        IPv6(src=outer_src, dst=outer_dst) if ":" in outer_dst else IP(src=outer_src, dst=outer_dst)
    )
    return (
        Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
        / outer
        / UDP(sport=sport, dport=GUE_PORT, chksum=0)
        / Raw(g.pack() + l3)
    )
