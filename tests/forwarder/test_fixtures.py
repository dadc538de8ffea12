"""Table-driven packet fixtures through BPF_PROG_TEST_RUN: every branch of edge and server.

Each row: description, program, input frame, table state, expected action, expected verdict and
the expected output frame, built here with scapy independently of the model: the GUE header is
packed by hand from schemas/gue.md; only the flow hash behind the UDP source port is the model's
(model.flow_hash, which test_layout checks against the C hash compiled on the host).
"""

from __future__ import annotations

import ipaddress as ia
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from schemas.bucket import Bucket, Flag
from schemas.messages import TierCounters
from services.forwarder import packets as P
from services.forwarder.layout import GUE_PORT, TierFlag, Verdict, XdpAction, addr16
from services.forwarder.loader import Count, Forwarder, Role
from services.forwarder.model import flow_hash
from services.forwarder.sync import tier_counters
from services.forwarder.types import NodeConfig, TableState
from tests.forwarder.harness import prepare, run_both

pytestmark = pytest.mark.root

A, B = XdpAction, Verdict
SIMPLE4 = Bucket(primary=P.SERVER4)
SIMPLE6 = Bucket(primary=P.SERVER6)
AWAY_INTER = Bucket(
    primary=P.SERVER4, secondary=P.REMOTE4, inter_pop=True, away=True, secondary_pop=7
)
AWAY_INTRA = Bucket(primary=P.SERVER4, secondary=P.SERVER2_4, away=True)


def _sport(frame: Packet, st: TableState, tier: int) -> int:
    """The UDP source port, 0xc000 | hash >> 18 (schemas/gue.md), of the flow key (struct
    flow_key: mapped addresses, then ports and protocol unless the tier hashes addresses only).
    The hash itself is model.flow_hash, which test_layout checks against hashing.h."""
    l3 = frame[IPv6] if IPv6 in frame else frame[IP]
    key = addr16(l3.src) + addr16(l3.dst)
    if st.tier_flags.get(tier, 0) & TierFlag.HASH_ADDRS:
        key += bytes(8)
    else:
        l4 = l3.payload
        proto = 6 if isinstance(l4, TCP) else 17
        key += struct.pack("!HHB3x", l4.sport, l4.dport, proto)
    return 0xC000 | flow_hash(key) >> 18


def _gue_header(
    *,
    inner_v6: bool,
    flags: int,
    hop_index: int,
    hop_count: int,
    landing: int,
    secondary_pop: int,
    tier: int,
    secondary: bytes,
) -> bytes:
    """The 32 bytes of schemas/gue.md's table, field by field, in network order."""
    return (
        bytes([0x07, 41 if inner_v6 else 4])  # ver 0, C 0, Hlen 7; inner protocol
        + bytes(2)  # GUE flags
        + bytes([1, flags, hop_index, hop_count])  # priv version 1
        + landing.to_bytes(2, "big")
        + secondary_pop.to_bytes(2, "big")
        + bytes([tier])
        + bytes(3)
        + secondary
    )


def _priv_flags(entry: Bucket) -> int:
    """What an edge copies from its bucket (schemas/gue.md): has secondary, inter-PoP, away."""
    has = 0x01 if entry.secondary is not None else 0
    return has | (0x02 if entry.inter_pop else 0) | (0x04 if entry.away else 0)


def encapsulated(
    frame: Packet,
    st: TableState,
    *,
    dst: str,
    tier: int,
    entry: Bucket,
    flags: int | None = None,
    landing: int = P.POP,
    src_mac: str = P.EDGE_MAC,
    removed_inner: bytes | None = None,
    sport: int | None = None,
    outer_src: str | None = None,
    hop_index: int = 0,
    hop_count: int | None = None,
) -> bytes:
    """The frame an edge or server sends: written out field by field."""
    inner = removed_inner if removed_inner is not None else bytes(frame)[14:]
    inner_v6 = inner[0] >> 4 == 6
    tos = ((inner[0] & 0xF) << 4 | inner[1] >> 4) if inner_v6 else inner[1]
    f = _priv_flags(entry) if flags is None else flags
    has = bool(f & 0x01)
    carried = has or hop_index
    gue = _gue_header(
        inner_v6=inner_v6,
        flags=f,
        hop_index=hop_index,
        hop_count=(1 if has else 0) if hop_count is None else hop_count,
        landing=landing,
        secondary_pop=entry.secondary_pop if carried else 0,
        tier=tier,
        secondary=addr16(entry.secondary) if carried else bytes(16),
    )
    port = _sport(frame, st, tier) if sport is None else sport
    udp = UDP(sport=port, dport=GUE_PORT, chksum=0)
    if ":" in dst:
        outer: Packet = IPv6(src=outer_src or P.EDGE6, dst=dst, tc=tos, fl=port, hlim=64)
    else:
        outer = IP(src=outer_src or P.EDGE4, dst=dst, flags="DF", id=0, ttl=64, tos=tos)
    eth = Ether(src=src_mac, dst=P.ROUTER_MAC)
    return bytes(eth / outer / udp / Raw(gue + inner))


def delivered(frame: Packet) -> bytes:
    """What local delivery leaves: the outer Ethernet addresses in front of the inner packet."""
    raw = bytes(frame)
    inner = raw[14 + 20 + 8 + 32 :] if raw[12:14] == b"\x08\x00" else raw[14 + 40 + 8 + 32 :]
    etype = b"\x86\xdd" if inner[0] >> 4 == 6 else b"\x08\x00"
    return raw[:12] + etype + inner


@dataclass
class Case:
    description: str
    role: Role
    frame: Packet
    st: TableState
    action: XdpAction
    verdict: Verdict
    expected: Callable[[], bytes] | None = None  # None: the input comes back unchanged
    cfg: NodeConfig | None = None


def _edge_cases() -> list[Case]:
    syn4, udp6 = P.client(), P.client(v6=True, proto="udp", payload=b"q")
    syn6_to4 = P.client(v6=True)
    st4, st6 = P.state(SIMPLE4), P.state(SIMPLE6)
    st_sec = P.state(AWAY_INTER)
    addrs = P.state(SIMPLE4, tier_flags={0: TierFlag.HASH_ADDRS})
    big4 = P.client(payload=bytes(1460))
    big6 = P.client(v6=True, payload=bytes(1440))
    big4_nodf = P.client(payload=bytes(1460))
    big4_nodf[IP].flags = 0
    peer_in = P.gue(P.client(), outer_src=P.PEER_POP_EDGE4, outer_dst=P.EDGE4, landing_pop=8)
    blocked = P.state(SIMPLE4, blocklist={ia.ip_network("198.51.100.0/24")})
    return [
        Case(
            "edge: IPv4 TCP SYN to the VIP -> GUE over IPv4 to the primary",
            Role.EDGE,
            syn4,
            st4,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(syn4, st4, dst=P.SERVER4, tier=0, entry=SIMPLE4),
        ),
        Case(
            "edge: IPv6 UDP to the VIP -> GUE over IPv6",
            Role.EDGE,
            udp6,
            st6,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(udp6, st6, dst=P.SERVER6, tier=1, entry=SIMPLE6),
        ),
        Case(
            "edge: IPv6 inner, IPv4 outer",
            Role.EDGE,
            syn6_to4,
            st4,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(syn6_to4, st4, dst=P.SERVER4, tier=1, entry=SIMPLE4),
        ),
        Case(
            "edge: secondary, flags and landing PoP travel in the GUE private data",
            Role.EDGE,
            syn4,
            st_sec,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(syn4, st_sec, dst=P.SERVER4, tier=0, entry=AWAY_INTER),
        ),
        Case(
            "edge: tier hashing source and destination only",
            Role.EDGE,
            syn4,
            addrs,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(syn4, addrs, dst=P.SERVER4, tier=0, entry=SIMPLE4),
        ),
        Case(
            "edge: blocklisted source dropped before anything else",
            Role.EDGE,
            syn4,
            blocked,
            A.DROP,
            B.DROP_BLOCKLIST,
        ),
        Case(
            "edge: GUE from a peer PoP whose inner source is blocklisted -> dropped",
            Role.EDGE,
            peer_in,
            blocked,
            A.DROP,
            B.DROP_BLOCKLIST,
        ),
        Case(
            "edge: not a VIP -> the stack",
            Role.EDGE,
            P.client(dst="203.0.113.1"),
            st4,
            A.PASS,
            B.PASS_NOT_OURS,
        ),
        Case(
            "edge: empty bucket dropped", Role.EDGE, syn4, P.state(None), A.DROP, B.DROP_NO_BUCKET
        ),
        Case(
            "edge: too big IPv4 with DF -> ICMP fragmentation needed",
            Role.EDGE,
            big4,
            st4,
            A.TX,
            B.TOO_BIG_ICMP,
            lambda: bytes(
                Ether(src=P.EDGE_MAC, dst=P.CLIENT_MAC)
                / IP(src=P.VIP4, dst=P.CLIENT4, id=0, ttl=64, flags=0)
                / ICMP(type=3, code=4, nexthopmtu=1440)
                / Raw(bytes(big4)[14:42])
            ),
        ),
        Case(
            "edge: too big IPv6 -> ICMPv6 packet too big",
            Role.EDGE,
            big6,
            st4,
            A.TX,
            B.TOO_BIG_ICMP,
            lambda: bytes(
                Ether(src=P.EDGE_MAC, dst=P.CLIENT_MAC)
                / IPv6(src=P.VIP6, dst=P.CLIENT6, hlim=64)
                / ICMPv6PacketTooBig(mtu=1440)
                / Raw(bytes(big6)[14:62])
            ),
        ),
        Case(
            "edge: too big IPv4 without DF -> dropped and counted",
            Role.EDGE,
            big4_nodf,
            st4,
            A.DROP,
            B.DROP_TOO_BIG,
        ),
        Case(
            "receiving PoP: GUE from a peer PoP -> local primary with FROM_PEER, inter-PoP "
            "secondary removed; the server counts it received, the edge FWD_INTRA",
            Role.EDGE,
            peer_in,
            st_sec,
            A.TX,
            B.FWD_INTRA,
            lambda: encapsulated(
                P.client(),
                st_sec,
                dst=P.SERVER4,
                tier=0,
                entry=AWAY_INTER,
                flags=Flag.FROM_PEER,
                landing=8,
                src_mac="02:00:00:00:00:04",
            ),
        ),
        Case(
            "receiving PoP: GUE from a local (non-peer) source dropped",
            Role.EDGE,
            P.gue(P.client(), outer_src=P.SERVER4, outer_dst=P.EDGE4),
            st4,
            A.DROP,
            B.DROP_GUE_UNKNOWN_SRC,
        ),
    ]


def _server_cases() -> list[Case]:
    syn4, syn6 = P.client(), P.client(v6=True)
    ack4, ack6 = P.client(flags="A"), P.client(v6=True, flags="A")
    udp4 = P.client(proto="udp")
    st = P.state(None)
    sec_inter: dict[str, Any] = {
        "flags": AWAY_INTER.flags & 0xF,
        "secondary": P.REMOTE4,
        "secondary_pop": 7,
    }
    back_intra: dict[str, Any] = {"flags": Flag.HAS_SECONDARY, "secondary": P.SERVER2_4}
    away_intra: dict[str, Any] = {"flags": AWAY_INTRA.flags & 0xF, "secondary": P.SERVER2_4}
    from_peer_back: dict[str, Any] = {
        "flags": Flag.FROM_PEER | Flag.HAS_SECONDARY,
        "secondary": P.SERVER2_4,
    }
    icmp4 = Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC) / IP(src=P.CLIENT4, dst=P.VIP4) / ICMP()
    blocked = P.state(None, blocklist={ia.ip_network("198.51.100.0/24")})

    def fwd(inner: Packet, entry: Bucket, sec: str, flags: int) -> Callable[[], bytes]:
        return lambda: encapsulated(
            inner,
            st,
            dst=sec,
            tier=0,
            entry=entry,
            flags=flags,
            sport=50000,
            outer_src=P.SERVER4,
            src_mac="02:00:00:00:00:04",
            hop_index=1,
            hop_count=1,
        )

    cases = [
        Case(
            "server: SYN without secondary -> local",
            Role.SERVER,
            P.gue(syn4),
            st,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(syn4)),
        ),
        Case(
            "server: IPv6 SYN, direction back -> local",
            Role.SERVER,
            P.gue(syn6, **back_intra),
            st,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(syn6, **back_intra)),
        ),
        Case(
            "server: SYN, direction away, inter-PoP -> secondary PoP",
            Role.SERVER,
            P.gue(syn4, **sec_inter),
            st,
            A.TX,
            B.FWD_INTER,
            fwd(syn4, AWAY_INTER, P.REMOTE4, (AWAY_INTER.flags & 0xF) & ~Flag.HAS_SECONDARY),
        ),
        Case(
            "server: SYN, direction away, intra-PoP -> second server",
            Role.SERVER,
            P.gue(syn4, **away_intra),
            st,
            A.TX,
            B.FWD_INTRA,
            fwd(syn4, AWAY_INTRA, P.SERVER2_4, Flag.AWAY),
        ),
        Case(
            "server: ACK without a local socket -> second chance",
            Role.SERVER,
            P.gue(ack4, **back_intra),
            st,
            A.TX,
            B.SECOND_CHANCE,
            fwd(ack4, AWAY_INTRA, P.SERVER2_4, 0),
        ),
        Case(
            "server: IPv6 ACK without socket -> second chance to another PoP",
            Role.SERVER,
            P.gue(ack6, **sec_inter),
            st,
            A.TX,
            B.SECOND_CHANCE_INTER,
            fwd(ack6, AWAY_INTER, P.REMOTE4, (AWAY_INTER.flags & 0xF) & ~Flag.HAS_SECONDARY),
        ),
        Case(
            "server: UDP without connected socket follows direction away",
            Role.SERVER,
            P.gue(udp4, **sec_inter),
            st,
            A.TX,
            B.FWD_INTER,
            fwd(udp4, AWAY_INTER, P.REMOTE4, (AWAY_INTER.flags & 0xF) & ~Flag.HAS_SECONDARY),
        ),
        Case(
            "server: UDP, direction back -> local",
            Role.SERVER,
            P.gue(udp4, **back_intra),
            st,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(udp4, **back_intra)),
        ),
        Case(
            "server: from another PoP -> local, never forwarded again",
            Role.SERVER,
            P.gue(ack4, outer_src=P.REMOTE4, **sec_inter),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(P.gue(ack4, outer_src=P.REMOTE4, **sec_inter)),
        ),
        Case(
            "server: from another PoP, inner source blocklisted -> dropped",
            Role.SERVER,
            P.gue(ack4, outer_src=P.REMOTE4, **sec_inter),
            blocked,
            A.DROP,
            B.DROP_BLOCKLIST,
        ),
        Case(
            "server: from our edge, inner source blocklisted -> the edge checked it: local",
            Role.SERVER,
            P.gue(ack4),
            blocked,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(ack4)),
        ),
        Case(
            "server: from our edge with FROM_PEER, no secondary -> received, not local",
            Role.SERVER,
            P.gue(ack4, flags=Flag.FROM_PEER),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(P.gue(ack4, flags=Flag.FROM_PEER)),
        ),
        Case(
            "server: FROM_PEER SYN, intra-PoP secondary, direction back -> received",
            Role.SERVER,
            P.gue(syn4, **from_peer_back),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(P.gue(syn4, **from_peer_back)),
        ),
        Case(
            "server: FROM_PEER ACK without socket -> intra-PoP second chance, flag kept",
            Role.SERVER,
            P.gue(ack4, **from_peer_back),
            st,
            A.TX,
            B.SECOND_CHANCE,
            fwd(ack4, AWAY_INTRA, P.SERVER2_4, Flag.FROM_PEER),
        ),
        Case(
            "server: FROM_PEER after its intra-PoP hop -> received",
            Role.SERVER,
            P.gue(ack4, flags=Flag.FROM_PEER, hop_index=1, hop_count=1, outer_src=P.SERVER2_4),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(
                P.gue(ack4, flags=Flag.FROM_PEER, hop_index=1, hop_count=1, outer_src=P.SERVER2_4)
            ),
        ),
        Case(
            "server: FROM_PEER with hops exhausted -> received, not local_hops_exhausted",
            Role.SERVER,
            P.gue(ack4, hop_index=1, hop_count=1, **from_peer_back),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(P.gue(ack4, hop_index=1, hop_count=1, **from_peer_back)),
        ),
        Case(
            "server: ICMP inside GUE from another PoP -> received",
            Role.SERVER,
            P.gue(icmp4, outer_src=P.REMOTE4),
            st,
            A.PASS,
            B.RECEIVED_PEER,
            lambda: delivered(P.gue(icmp4, outer_src=P.REMOTE4)),
        ),
        Case(
            "server: ICMP inside GUE from our edge -> local",
            Role.SERVER,
            P.gue(icmp4),
            st,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(icmp4)),
        ),
        Case(
            "server: hops exhausted -> local",
            Role.SERVER,
            P.gue(ack4, hop_index=1, hop_count=1, **back_intra),
            st,
            A.PASS,
            B.LOCAL_HOPS_EXHAUSTED,
            lambda: delivered(P.gue(ack4, hop_index=1, hop_count=1, **back_intra)),
        ),
        Case(
            "server: secondary is this server -> local",
            Role.SERVER,
            P.gue(ack4, flags=Flag.HAS_SECONDARY, secondary=P.SERVER4),
            st,
            A.PASS,
            B.LOCAL_SELF_SECONDARY,
            lambda: delivered(P.gue(ack4, flags=Flag.HAS_SECONDARY, secondary=P.SERVER4)),
        ),
        Case(
            "server: GUE over IPv6 outer",
            Role.SERVER,
            P.gue(syn4, outer_src=P.EDGE6, outer_dst=P.SERVER6),
            st,
            A.PASS,
            B.LOCAL,
            lambda: delivered(P.gue(syn4, outer_src=P.EDGE6, outer_dst=P.SERVER6)),
        ),
        Case(
            "server: GUE from an unknown source dropped",
            Role.SERVER,
            P.gue(syn4, outer_src="192.168.50.1"),
            st,
            A.DROP,
            B.DROP_GUE_UNKNOWN_SRC,
        ),
        Case(
            "server: bad GUE version dropped",
            Role.SERVER,
            P.gue(syn4, ver_c_hlen=0x47),
            st,
            A.DROP,
            B.DROP_GUE_BAD,
        ),
        Case(
            "server: plain traffic to the server -> the stack",
            Role.SERVER,
            P.client(dst=P.SERVER4),
            st,
            A.PASS,
            B.PASS_NOT_OURS,
        ),
    ]
    return cases


CASES = _edge_cases() + _server_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
def test_fixture(case: Case, edge_fwd: Forwarder, server_fwd: Forwarder) -> None:
    fwd = edge_fwd if case.role is Role.EDGE else server_fwd
    cfg = case.cfg or (P.EDGE_CFG if case.role is Role.EDGE else P.SERVER_CFG)
    prepare(fwd, cfg, case.st)
    frame = bytes(case.frame)
    outcome = run_both(fwd, cfg, case.st, frame)
    assert (outcome.action, outcome.verdict) == (case.action, case.verdict)
    expected = case.expected() if case.expected else frame
    assert outcome.packet.hex() == expected.hex()


def _pop_totals(*outcomes: Verdict) -> TierCounters:
    """The counters of one PoP's nodes summed, as the policy engine sums them."""
    counts = {v: Count(0, 0) for v in Verdict}
    for v in outcomes:
        counts[v] = Count(counts[v].packets + 1, 0)
    return tier_counters(0, counts)


@pytest.mark.parametrize("v6", [False, True])
def test_received_traffic_is_counted_once_across_edge_and_server(
    edge_fwd: Forwarder, server_fwd: Forwarder, v6: bool
) -> None:
    """A packet from a peer PoP goes edge -> server: the PoP counts it received exactly once and
    never as local (the double count that made a receiving PoP look like a shedder)."""
    st = P.state(AWAY_INTER)
    inner = P.client(flags="A", v6=v6)
    tier = 1 if v6 else 0
    peer_in = bytes(P.gue(inner, outer_src=P.PEER_POP_EDGE4, outer_dst=P.EDGE4, landing_pop=8))
    own = bytes(P.client(flags="A", v6=v6, sport=40001))
    prepare(edge_fwd, P.EDGE_CFG, st)
    prepare(server_fwd, P.SERVER_CFG, st)
    verdicts = []
    for frame in (peer_in, own):
        at_edge = run_both(edge_fwd, P.EDGE_CFG, st, frame)
        assert (at_edge.action, at_edge.verdict, at_edge.tier) == (A.TX, B.FWD_INTRA, tier)
        at_server = run_both(server_fwd, P.SERVER_CFG, st, at_edge.packet)
        verdicts.append((at_edge.verdict, at_server.verdict))
    # The peer's packet: received, delivered here; our client's ACK: second chance to PoP 7.
    assert verdicts == [(B.FWD_INTRA, B.RECEIVED_PEER), (B.FWD_INTRA, B.SECOND_CHANCE_INTER)]
    totals = _pop_totals(*(v for pair in verdicts for v in pair))
    assert (totals.local, totals.received_from_peer) == (0, 1)
    assert totals.inter_pop_forward + totals.second_chance_forward == 1
    assert totals.intra_pop_forward == 2  # the edge's two hand-offs, not demand
