"""Executable spec of the XDP programs: the same decisions in plain Python, no I/O.

`edge()` and `server()` take the input frame, the node config and the table state, and return
the XDP action, the verdict (counter), the tier and the output frame, byte for byte what the C
programs produce under BPF_PROG_TEST_RUN. Parsing mirrors bpf/parsing.h with `struct` (so
hostile frames get exactly the C rules); output headers are built with scapy. The model covers
the static next-hop mode (CFG_FIB clear): FIB results depend on the host's neighbour table.
scapy is used here and in tests only, never on the packet path.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from schemas.bucket import Bucket, Flag
from services.forwarder.layout import (
    ENCAP_OVERHEAD_V4,
    ENCAP_OVERHEAD_V6,
    GUE_FLAGS_MASK,
    GUE_HLEN_WORDS,
    GUE_LEN,
    GUE_PORT,
    GUE_PRIV_VERSION,
    GUE_STRUCT,
    HASH_SEED,
    ICMP4_QUOTE,
    ICMP6_QUOTE,
    MAX_HOPS,
    OUTER_TTL,
    TIERS,
    UDP_SPORT_BASE,
    IpNetwork,
    PeerKind,
    TierFlag,
    Verdict,
    XdpAction,
    addr16,
)
from services.forwarder.types import NodeConfig, TableState

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
TCP_SYN = 0x02
TCP_ACK = 0x10
MAX_L3_OFF = 160
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_M32 = 0xFFFFFFFF

T = TypeVar("T")


class Parse(enum.IntEnum):
    OK = 0
    MALFORMED = 1
    UNSUPPORTED = 2
    GUE_BAD = 3
    NOT_IP = 4


@dataclass(frozen=True)
class Outcome:
    action: XdpAction
    verdict: Verdict
    tier: int | None
    packet: bytes


@dataclass
class Parsed:
    """struct packet of bpf/parsing.h."""

    l3_off: int
    v6: bool
    l3_len: int = 0
    l4_off: int = 0
    src: bytes = bytes(16)
    dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    proto: int = 0
    tcp_flags: int = 0
    tos: int = 0
    df: bool = False
    options: bool = False
    frag: bool = False


@dataclass(frozen=True)
class Gue:
    """The GUE header fields the programs read (struct gue_hdr)."""

    ver_c_hlen: int
    proto: int
    flags: int
    priv_version: int
    priv_flags: int
    hop_index: int
    hop_count: int
    landing_pop: int
    secondary_pop: int
    tier: int
    secondary: bytes

    @classmethod
    def unpack(cls, raw: bytes) -> Gue:
        return cls(*GUE_STRUCT.unpack(raw))

    def pack(self) -> bytes:
        return GUE_STRUCT.pack(
            self.ver_c_hlen,
            self.proto,
            self.flags,
            self.priv_version,
            self.priv_flags,
            self.hop_index,
            self.hop_count,
            self.landing_pop,
            self.secondary_pop,
            self.tier,
            self.secondary,
        )


def is_mapped4(a: bytes) -> bool:
    return a[:12] == _MAPPED_PREFIX


def overhead(dst: bytes) -> int:
    return ENCAP_OVERHEAD_V4 if is_mapped4(dst) else ENCAP_OVERHEAD_V6


def parse_l3(pkt: bytes, off: int, v6: bool) -> tuple[Parse, Parsed]:
    p = Parsed(l3_off=off, v6=v6)
    if off > MAX_L3_OFF or off > len(pkt):
        return Parse.MALFORMED, p
    avail = len(pkt) - off
    p.l3_len = avail
    if not v6:
        if avail < 20:
            return Parse.MALFORMED, p
        b0, tos, tot, _id, frag_off, _ttl, proto = struct.unpack_from("!BBHHHBB", pkt, off)
        ihl = b0 & 0x0F
        if b0 >> 4 != 4 or ihl < 5:
            return Parse.MALFORMED, p
        hl = ihl * 4
        if tot < hl or tot > avail:
            return Parse.MALFORMED, p
        p.df = bool(frag_off & 0x4000)
        p.frag = bool(frag_off & 0x3FFF)
        p.options = hl > 20
        p.proto = proto
        p.tos = tos
        p.l4_off = off + hl
        p.src = _MAPPED_PREFIX + pkt[off + 12 : off + 16]
        p.dst = _MAPPED_PREFIX + pkt[off + 16 : off + 20]
    else:
        if avail < 40:
            return Parse.MALFORMED, p
        b0, b1 = pkt[off], pkt[off + 1]
        (payload,) = struct.unpack_from("!H", pkt, off + 4)
        if b0 >> 4 != 6 or 40 + payload > avail:
            return Parse.MALFORMED, p
        p.proto = pkt[off + 6]
        p.tos = ((b0 & 0x0F) << 4) | (b1 >> 4)
        p.l4_off = off + 40
        p.src = pkt[off + 8 : off + 24]
        p.dst = pkt[off + 24 : off + 40]
    return Parse.OK, p


def parse_l4(pkt: bytes, p: Parsed) -> Parse:
    off = p.l4_off
    if p.frag:
        return Parse.UNSUPPORTED
    if off > MAX_L3_OFF + 60:
        return Parse.MALFORMED
    if p.proto == IPPROTO_TCP:
        if len(pkt) < off + 20:
            return Parse.MALFORMED
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
        p.tcp_flags = pkt[off + 13]
        doff = pkt[off + 12] >> 4
        if doff < 5 or off + doff * 4 > len(pkt):
            return Parse.MALFORMED
        return Parse.OK
    if p.proto == IPPROTO_UDP:
        if len(pkt) < off + 8:
            return Parse.MALFORMED
        p.sport, p.dport = struct.unpack_from("!HH", pkt, off)
        return Parse.OK
    return Parse.UNSUPPORTED


def gue_valid(g: Gue) -> bool:
    """The checks of parse_gue(): only headers popshift writes are accepted."""
    return not (
        g.ver_c_hlen != GUE_HLEN_WORDS
        or g.flags != 0
        or g.priv_version != GUE_PRIV_VERSION
        or g.priv_flags & ~GUE_FLAGS_MASK
        or g.hop_count > MAX_HOPS
        or g.hop_index > g.hop_count
        or g.tier >= TIERS
        or (g.priv_flags & Flag.FROM_PEER and g.priv_flags & Flag.INTER_POP)
    )


def parse_gue(pkt: bytes, outer: Parsed) -> tuple[Parse, Gue | None, Parsed]:
    off = outer.l4_off + 8
    inner = Parsed(l3_off=0, v6=False)
    if off > MAX_L3_OFF or len(pkt) < off + GUE_LEN:
        return Parse.MALFORMED, None, inner
    g = Gue.unpack(pkt[off : off + GUE_LEN])
    if not gue_valid(g) or g.proto not in (IPPROTO_IPIP, IPPROTO_IPV6):
        return Parse.GUE_BAD, g, inner
    rc, inner = parse_l3(pkt, off + GUE_LEN, g.proto == IPPROTO_IPV6)
    if rc != Parse.OK:
        return rc, g, inner
    return parse_l4(pkt, inner), g, inner


def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for r1, r2, r3 in ((4, 6, 8), (16, 19, 4)):
        a = (a - c) & _M32
        a ^= _rol(c, r1)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rol(a, r2)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rol(b, r3)
        b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    for x, y, s in (
        ("c", "b", 14),
        ("a", "c", 11),
        ("b", "a", 25),
        ("c", "b", 16),
        ("a", "c", 4),
        ("b", "a", 14),
        ("c", "b", 24),
    ):
        v = {"a": a, "b": b, "c": c}
        v[x] = ((v[x] ^ v[y]) - _rol(v[y], s)) & _M32
        a, b, c = v["a"], v["b"], v["c"]
    return c


def flow_hash(key: bytes) -> int:
    """jhash2 over the 10 little-endian words of struct flow_key (bpf/hashing.h)."""
    k = struct.unpack("<10I", key)
    a = b = c = (0xDEADBEEF + (10 << 2) + HASH_SEED) & _M32
    for i in (0, 3, 6):
        a, b, c = (a + k[i]) & _M32, (b + k[i + 1]) & _M32, (c + k[i + 2]) & _M32
        a, b, c = _mix(a, b, c)
    return _final((a + k[9]) & _M32, b, c)


def packet_hash(p: Parsed, tier: int, st: TableState) -> int:
    if st.tier_flags.get(tier, 0) & TierFlag.HASH_ADDRS:
        key = p.src + p.dst + bytes(8)
    else:
        key = p.src + p.dst + struct.pack("!HHB3x", p.sport, p.dport, p.proto)
    return flow_hash(key)


def entropy_port(h: int) -> int:
    return UDP_SPORT_BASE | (h >> 18)


def _mapped_net(net: IpNetwork) -> ipaddress.IPv6Network:
    if isinstance(net, ipaddress.IPv4Network):
        base = ipaddress.IPv6Address(_MAPPED_PREFIX + net.network_address.packed)
        return ipaddress.IPv6Network((base, 96 + net.prefixlen))
    return net


def lpm(table: Mapping[IpNetwork, T], addr: bytes) -> T | None:
    """Longest-prefix match of a 16-byte address, as BPF_MAP_TYPE_LPM_TRIE does it."""
    a = ipaddress.IPv6Address(addr)
    best: tuple[int, T] | None = None
    for net, value in table.items():
        m = _mapped_net(net)
        if a in m and (best is None or m.prefixlen > best[0]):
            best = (m.prefixlen, value)
    return None if best is None else best[1]


def _str(addr: bytes) -> str:
    v6 = ipaddress.IPv6Address(addr)
    return str(v6.ipv4_mapped) if is_mapped4(addr) and v6.ipv4_mapped else str(v6)


def encapsulate(
    pkt: bytes,
    removed: int,
    cfg: NodeConfig,
    dst: bytes,
    gue: Gue,
    sport: int,
    inner_v6: bool,
    tos: int,
) -> bytes:
    """encap_push() + static transmit(): new outer headers in front of pkt[14 + removed:]."""
    inner = pkt[ETH_HLEN + removed :]
    body = Raw(gue.pack() + inner)
    udp = UDP(sport=sport, dport=GUE_PORT, len=8 + GUE_LEN + len(inner), chksum=0)
    ingress_mac = pkt[0:6]
    outer: Any
    if is_mapped4(dst):
        outer = IP(
            version=4,
            ihl=5,
            tos=tos,
            len=20 + 8 + GUE_LEN + len(inner),
            id=0,
            flags="DF",
            frag=0,
            ttl=OUTER_TTL,
            proto=IPPROTO_UDP,
            src=_str(cfg.self_addr(False)) if cfg.self4 else "0.0.0.0",
            dst=_str(dst),
        )
        etype = ETH_P_IP
    else:
        outer = IPv6(
            version=6,
            tc=tos,
            fl=sport,
            plen=8 + GUE_LEN + len(inner),
            nh=IPPROTO_UDP,
            hlim=OUTER_TTL,
            src=_str(cfg.self_addr(True)),
            dst=_str(dst),
        )
        etype = ETH_P_IPV6
    eth = Ether(dst=cfg.nexthop_mac, src=ingress_mac, type=etype)
    return bytes(eth / outer / udp / body)


def decapsulate(pkt: bytes, inner: Parsed) -> bytes:
    """decap(): the outer Ethernet addresses in front of the inner packet."""
    etype = ETH_P_IPV6 if inner.v6 else ETH_P_IP
    return pkt[:12] + struct.pack("!H", etype) + pkt[inner.l3_off :]


def icmp_too_big(pkt: bytes, p: Parsed, mtu: int) -> bytes:
    """icmp4_too_big() / icmp6_too_big(): the reply that goes back to the client."""
    eth = Ether(dst=pkt[6:12], src=pkt[0:6], type=ETH_P_IPV6 if p.v6 else ETH_P_IP)
    if p.v6:
        quote = pkt[ETH_HLEN : ETH_HLEN + ICMP6_QUOTE]
        ip6 = IPv6(
            tc=0,
            fl=0,
            plen=8 + ICMP6_QUOTE,
            nh=58,
            hlim=OUTER_TTL,
            src=_str(p.dst),
            dst=_str(p.src),
        )
        return bytes(eth / ip6 / ICMPv6PacketTooBig(mtu=mtu & _M32) / Raw(quote))
    quote = pkt[ETH_HLEN : ETH_HLEN + ICMP4_QUOTE]
    ip = IP(
        ihl=5,
        tos=0,
        len=20 + 8 + ICMP4_QUOTE,
        id=0,
        flags=0,
        frag=0,
        ttl=OUTER_TTL,
        proto=1,
        src=_str(p.dst),
        dst=_str(p.src),
    )
    return bytes(eth / ip / ICMP(type=3, code=4, unused=0, nexthopmtu=mtu & 0xFFFF) / Raw(quote))


def _gue(flags: int, entry: Bucket, landing_pop: int, tier: int) -> Gue:
    """fill_gue() of the edge: the secondary travels only when the flags say it exists."""
    has = bool(flags & Flag.HAS_SECONDARY)
    return Gue(
        ver_c_hlen=GUE_HLEN_WORDS,
        proto=0,
        flags=0,
        priv_version=GUE_PRIV_VERSION,
        priv_flags=flags,
        hop_index=0,
        hop_count=1 if has else 0,
        landing_pop=landing_pop,
        secondary_pop=entry.secondary_pop if has else 0,
        tier=tier,
        secondary=addr16(entry.secondary) if has else bytes(16),
    )


def _with_proto(g: Gue, inner_v6: bool) -> Gue:
    return Gue(**{**g.__dict__, "proto": IPPROTO_IPV6 if inner_v6 else IPPROTO_IPIP})


def _forward(
    pkt: bytes,
    cfg: NodeConfig,
    removed: int,
    dst: bytes,
    g: Gue,
    sport: int,
    inner: Parsed,
    verdict: Verdict,
    tier: int,
) -> Outcome:
    out = encapsulate(pkt, removed, cfg, dst, _with_proto(g, inner.v6), sport, inner.v6, inner.tos)
    return Outcome(XdpAction.TX, verdict, tier, out)


def _done(pkt: bytes, verdict: Verdict, tier: int | None, action: XdpAction) -> Outcome:
    return Outcome(action, verdict, tier, pkt)


def _ethertype(pkt: bytes) -> bool | None:
    """False for IPv4, True for IPv6, None for anything else."""
    etype = struct.unpack_from("!H", pkt, 12)[0]
    return {ETH_P_IP: False, ETH_P_IPV6: True}.get(etype)


def _too_big(cfg: NodeConfig, inner_len: int, dst: bytes) -> bool:
    return bool(cfg.mtu) and inner_len + overhead(dst) > cfg.mtu


def _blocklisted(st: TableState, src: bytes) -> bool:
    return lpm(dict.fromkeys(st.blocklist, True), src) is not None


def _bucket(st: TableState, tier: int, h: int) -> Bucket | None:
    return st.table.get((tier, h & ((1 << st.bucket_bits) - 1)))


def parse_frame(pkt: bytes) -> tuple[Parse, bool, Parsed]:
    """parse_frame of bpf/parsing.h: Ethernet, then the outer IP header."""
    if len(pkt) < ETH_HLEN:
        return Parse.MALFORMED, False, Parsed(l3_off=ETH_HLEN, v6=False)
    v6 = _ethertype(pkt)
    if v6 is None:
        return Parse.NOT_IP, False, Parsed(l3_off=ETH_HLEN, v6=False)
    rc, p = parse_l3(pkt, ETH_HLEN, v6)
    return rc, v6, p


def edge(pkt: bytes, cfg: NodeConfig, st: TableState) -> Outcome:
    """popshift_edge (bpf/edge.bpf.c)."""
    drop, tx, pas = XdpAction.DROP, XdpAction.TX, XdpAction.PASS
    rc, v6, p = parse_frame(pkt)
    if rc == Parse.NOT_IP:
        return _done(pkt, Verdict.PASS_NOT_OURS, None, pas)
    if rc != Parse.OK:
        return _done(pkt, Verdict.DROP_MALFORMED, None, drop)
    if _blocklisted(st, p.src):
        return _done(pkt, Verdict.DROP_BLOCKLIST, None, drop)
    l4 = parse_l4(pkt, p)
    if (
        l4 == Parse.OK
        and p.proto == IPPROTO_UDP
        and p.dport == GUE_PORT
        and (p.dst == cfg.self_addr(v6))
    ):
        return _receive_from_peer(pkt, cfg, st, p)
    tier = lpm(st.vips, p.dst)
    if tier is None:
        return _done(pkt, Verdict.PASS_NOT_OURS, None, pas)
    if tier >= st.tiers:
        return _done(pkt, Verdict.DROP_NO_BUCKET, None, drop)
    if l4 == Parse.UNSUPPORTED:
        return _done(pkt, Verdict.PASS_UNSUPPORTED, tier, pas)
    if l4 != Parse.OK:
        return _done(pkt, Verdict.DROP_MALFORMED, tier, drop)
    h = packet_hash(p, tier, st)
    b = _bucket(st, tier, h)
    if b is None:
        return _done(pkt, Verdict.DROP_NO_BUCKET, tier, drop)
    dst = addr16(b.primary)
    if _too_big(cfg, p.l3_len, dst):
        mtu = cfg.mtu - overhead(dst)
        if p.v6 or (p.df and not p.options):
            return Outcome(tx, Verdict.TOO_BIG_ICMP, tier, icmp_too_big(pkt, p, mtu))
        return _done(pkt, Verdict.DROP_TOO_BIG, tier, drop)
    g = _gue(b.flags & GUE_FLAGS_MASK & ~Flag.FROM_PEER, b, cfg.pop_id, tier)
    return _forward(pkt, cfg, 0, dst, g, entropy_port(h), p, Verdict.FWD_INTRA, tier)


def _receive_from_peer(pkt: bytes, cfg: NodeConfig, st: TableState, outer: Parsed) -> Outcome:
    """receive_from_peer() of the edge: local servers only, never to a third PoP."""
    drop = XdpAction.DROP
    peer = lpm(st.peers, outer.src)
    if peer is None or peer[0] != PeerKind.REMOTE:
        return _done(pkt, Verdict.DROP_GUE_UNKNOWN_SRC, None, drop)
    rc, g, inner = parse_gue(pkt, outer)
    if rc == Parse.MALFORMED:
        return _done(pkt, Verdict.DROP_MALFORMED, None, drop)
    if rc != Parse.OK or g is None:
        return _done(pkt, Verdict.DROP_GUE_BAD, None, drop)
    if _blocklisted(st, inner.src):
        return _done(pkt, Verdict.DROP_BLOCKLIST, None, drop)
    tier = lpm(st.vips, inner.dst)
    if tier is None or tier >= st.tiers:
        return _done(pkt, Verdict.DROP_NO_BUCKET, None, drop)
    h = packet_hash(inner, tier, st)
    b = _bucket(st, tier, h)
    if b is None:
        return _done(pkt, Verdict.DROP_NO_BUCKET, tier, drop)
    flags = int(Flag.FROM_PEER)
    if not b.inter_pop:
        flags |= b.flags & (Flag.HAS_SECONDARY | Flag.AWAY)
    new = _gue(flags, b, g.landing_pop, tier)
    dst = addr16(b.primary)
    if _too_big(cfg, inner.l3_len, dst):
        return _done(pkt, Verdict.DROP_TOO_BIG, tier, drop)
    removed = inner.l3_off - ETH_HLEN
    sport = entropy_port(h)
    # FWD_INTRA: the local server counts the packet as received (it sees FROM_PEER).
    return _forward(pkt, cfg, removed, dst, new, sport, inner, Verdict.FWD_INTRA, tier)


OwnsFlow = Callable[[Parsed], bool]


def no_sockets(_: Parsed) -> bool:
    return False


def server(pkt: bytes, cfg: NodeConfig, st: TableState, owns: OwnsFlow = no_sockets) -> Outcome:
    """popshift_server (bpf/server.bpf.c); `owns` answers the socket lookup."""
    drop, pas = XdpAction.DROP, XdpAction.PASS
    rc, v6, p = parse_frame(pkt)
    if rc == Parse.NOT_IP:
        return _done(pkt, Verdict.PASS_NOT_OURS, None, pas)
    if rc != Parse.OK:
        return _done(pkt, Verdict.DROP_MALFORMED, None, drop)
    if (
        parse_l4(pkt, p) != Parse.OK
        or p.proto != IPPROTO_UDP
        or p.dport != GUE_PORT
        or p.dst != cfg.self_addr(v6)
    ):
        return _done(pkt, Verdict.PASS_NOT_OURS, None, pas)
    peer = lpm(st.peers, p.src)
    if peer is None:
        return _done(pkt, Verdict.DROP_GUE_UNKNOWN_SRC, None, drop)
    rc, g, inner = parse_gue(pkt, p)
    if rc == Parse.MALFORMED:
        return _done(pkt, Verdict.DROP_MALFORMED, None, drop)
    if rc == Parse.GUE_BAD or g is None:
        return _done(pkt, Verdict.DROP_GUE_BAD, None, drop)
    if peer[0] == PeerKind.REMOTE and _blocklisted(st, inner.src):
        return _done(pkt, Verdict.DROP_BLOCKLIST, None, drop)
    tier = g.tier

    def deliver(verdict: Verdict) -> Outcome:
        return Outcome(pas, verdict, tier, decapsulate(pkt, inner))

    from_peer = peer[0] == PeerKind.REMOTE or bool(g.priv_flags & Flag.FROM_PEER)
    local = Verdict.RECEIVED_PEER if from_peer else Verdict.LOCAL
    if rc == Parse.UNSUPPORTED:
        return deliver(local)
    if peer[0] == PeerKind.REMOTE:
        return deliver(Verdict.RECEIVED_PEER)
    if owns(inner) or not g.priv_flags & Flag.HAS_SECONDARY:
        return deliver(local)
    initial = inner.proto == IPPROTO_UDP or inner.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    if initial and not g.priv_flags & Flag.AWAY:
        return deliver(local)
    if g.hop_index >= g.hop_count:
        return deliver(local if from_peer else Verdict.LOCAL_HOPS_EXHAUSTED)
    if g.secondary == cfg.self_addr(not is_mapped4(g.secondary)):
        return deliver(local if from_peer else Verdict.LOCAL_SELF_SECONDARY)
    inter = bool(g.priv_flags & Flag.INTER_POP)
    if not initial:
        verdict = Verdict.SECOND_CHANCE_INTER if inter else Verdict.SECOND_CHANCE
    else:
        verdict = Verdict.FWD_INTER if inter else Verdict.FWD_INTRA
    new = Gue(
        **{
            **g.__dict__,
            "hop_index": g.hop_index + 1,
            "priv_flags": g.priv_flags & ~Flag.HAS_SECONDARY,
        }
    )
    if _too_big(cfg, inner.l3_len, g.secondary):
        return _done(pkt, Verdict.DROP_TOO_BIG, tier, drop)
    removed = inner.l3_off - ETH_HLEN
    return _forward(pkt, cfg, removed, g.secondary, new, p.sport, inner, verdict, tier)
