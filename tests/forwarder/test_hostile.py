"""Malformed and hostile frames: each gets its documented verdict and counter, in C and model."""

from __future__ import annotations

from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from schemas.bucket import Bucket, Flag
from services.forwarder import packets as P
from services.forwarder.layout import Verdict, XdpAction
from services.forwarder.loader import Forwarder
from tests.forwarder.harness import prepare, run_both

pytestmark = pytest.mark.root

ENTRY = Bucket(primary=P.SERVER4)
ST = P.state(ENTRY)


def _boundaries(frame: bytes, v6: bool) -> list[int]:
    l3 = 40 if v6 else 20
    return sorted(
        {
            0,
            6,
            13,
            14,
            14 + l3 // 2,
            14 + l3 - 1,
            14 + l3,
            14 + l3 + 10,
            14 + l3 + 19,
            len(frame) - 1,
        }
    )


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_edge_truncated_at_every_boundary(edge_fwd: Forwarder, v6: bool) -> None:
    """A cut frame is malformed: its IP length no longer fits. Dropped, counted."""
    prepare(edge_fwd, P.EDGE_CFG, ST)
    frame = bytes(P.client(v6=v6, payload=b"x"))
    for n in _boundaries(frame, v6):
        out = run_both(edge_fwd, P.EDGE_CFG, ST, frame[:n])
        assert (out.action, out.verdict) == (XdpAction.DROP, Verdict.DROP_MALFORMED), n


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_edge_l4_truncated_with_consistent_ip_length(edge_fwd: Forwarder, v6: bool) -> None:
    """IP header intact and self-consistent, TCP header cut: malformed, counted in the tier."""
    prepare(edge_fwd, P.EDGE_CFG, ST)
    for keep in (0, 4, 12, 19):
        frame = bytes(P.client(v6=v6))
        l3 = 40 if v6 else 20
        cut = bytearray(frame[: 14 + l3 + keep])
        if v6:
            cut[18:20] = keep.to_bytes(2, "big")
        else:
            pkt = Ether(bytes(cut))
            pkt[IP].len = l3 + keep
            del pkt[IP].chksum
            cut = bytearray(bytes(pkt)[: 14 + l3] + bytes(cut[14 + l3 :]))
        out = run_both(edge_fwd, P.EDGE_CFG, ST, bytes(cut))
        assert (out.verdict, out.tier) == (Verdict.DROP_MALFORMED, 1 if v6 else 0), keep


def test_server_truncated_gue_at_every_boundary(server_fwd: Forwarder) -> None:
    st = P.state(None)
    prepare(server_fwd, P.SERVER_CFG, st)
    frame = bytes(P.gue(P.client(), flags=Flag.HAS_SECONDARY, secondary=P.SERVER2_4))
    # Ethernet | outer IPv4 | UDP | GUE | inner IPv4 | TCP
    for n in (0, 13, 14, 33, 34, 41, 42, 60, 73, 74, 93, 94, 113):
        out = run_both(server_fwd, P.SERVER_CFG, st, frame[:n])
        assert out.action in (XdpAction.DROP, XdpAction.PASS), n
        assert out.verdict in (Verdict.DROP_MALFORMED, Verdict.PASS_NOT_OURS), n


def _edge_case(frame: Packet, verdict: Verdict, action: XdpAction, edge_fwd: Forwarder) -> None:
    prepare(edge_fwd, P.EDGE_CFG, ST)
    out = run_both(edge_fwd, P.EDGE_CFG, ST, bytes(frame))
    assert (out.verdict, out.action) == (verdict, action)


def _bad_ihl() -> bytes:
    raw = bytearray(bytes(P.client()))
    raw[14] = 0x44
    return bytes(raw)


EDGE_HOSTILE: dict[str, tuple[Any, Verdict, XdpAction]] = {
    "bad IHL": (_bad_ihl(), Verdict.DROP_MALFORMED, XdpAction.DROP),
    "IPv4 options are carried": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / IP(src=P.CLIENT4, dst=P.VIP4, options=b"\x01\x01\x01\x00")
        / TCP(flags="S"),
        Verdict.FWD_INTRA,
        XdpAction.TX,
    ),
    "IPv6 extension header": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / IPv6(src=P.CLIENT6, dst=P.VIP6)
        / IPv6ExtHdrHopByHop()
        / TCP(flags="S"),
        Verdict.PASS_UNSUPPORTED,
        XdpAction.PASS,
    ),
    "IPv4 first fragment": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / IP(src=P.CLIENT4, dst=P.VIP4, flags="MF")
        / TCP(flags="S"),
        Verdict.PASS_UNSUPPORTED,
        XdpAction.PASS,
    ),
    "IPv4 later fragment": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / IP(src=P.CLIENT4, dst=P.VIP4, frag=10)
        / bytes(16),
        Verdict.PASS_UNSUPPORTED,
        XdpAction.PASS,
    ),
    "ICMP echo to the VIP": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC) / IP(src=P.CLIENT4, dst=P.VIP4) / ICMP(),
        Verdict.PASS_UNSUPPORTED,
        XdpAction.PASS,
    ),
    "ARP (non-IP)": (
        Ether(src=P.CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(),
        Verdict.PASS_NOT_OURS,
        XdpAction.PASS,
    ),
    "VLAN-tagged": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / Dot1Q(vlan=5)
        / IP(src=P.CLIENT4, dst=P.VIP4)
        / TCP(flags="S"),
        Verdict.PASS_NOT_OURS,
        XdpAction.PASS,
    ),
    "TCP data offset below 5": (
        Ether(src=P.CLIENT_MAC, dst=P.EDGE_MAC)
        / IP(src=P.CLIENT4, dst=P.VIP4)
        / TCP(flags="S", dataofs=4),
        Verdict.DROP_MALFORMED,
        XdpAction.DROP,
    ),
    "GUE to the edge from an unknown source": (
        P.gue(P.client(), outer_src="192.168.9.9", outer_dst=P.EDGE4),
        Verdict.DROP_GUE_UNKNOWN_SRC,
        XdpAction.DROP,
    ),
    "GUE from a peer PoP with a bad version": (
        P.gue(P.client(), outer_src=P.PEER_POP_EDGE4, outer_dst=P.EDGE4, priv_version=9),
        Verdict.DROP_GUE_BAD,
        XdpAction.DROP,
    ),
}


@pytest.mark.parametrize("name", list(EDGE_HOSTILE))
def test_edge_hostile(name: str, edge_fwd: Forwarder) -> None:
    frame, verdict, action = EDGE_HOSTILE[name]
    _edge_case(frame if isinstance(frame, Packet) else Ether(frame), verdict, action, edge_fwd)


SERVER_HOSTILE: dict[str, tuple[dict[str, Any], Verdict]] = {
    "GUE from an unknown source": ({"outer_src": "192.168.9.9"}, Verdict.DROP_GUE_UNKNOWN_SRC),
    "bad GUE version bits": ({"ver_c_hlen": 0x47}, Verdict.DROP_GUE_BAD),
    "GUE control bit": ({"ver_c_hlen": 0x27}, Verdict.DROP_GUE_BAD),
    "GUE flags set": ({"gue_flags": 0x8000}, Verdict.DROP_GUE_BAD),
    "bad private-data version": ({"priv_version": 2}, Verdict.DROP_GUE_BAD),
    "unknown private flag": ({"priv_flags": 0x10}, Verdict.DROP_GUE_BAD),
    "hop index beyond hop count": ({"hop_index": 2, "hop_count": 1}, Verdict.DROP_GUE_BAD),
    "hop count beyond MAX_HOPS": ({"hop_count": 9}, Verdict.DROP_GUE_BAD),
    "tier out of range": ({"tier": 200}, Verdict.DROP_GUE_BAD),
    "from-peer and inter-PoP together": (
        {"priv_flags": Flag.FROM_PEER | Flag.INTER_POP},
        Verdict.DROP_GUE_BAD,
    ),
    "inner protocol not IP": ({"proto": 17}, Verdict.DROP_GUE_BAD),
    "inner version does not match proto": ({"proto": 41}, Verdict.DROP_MALFORMED),
    "hop count exceeded": (
        {"flags": Flag.HAS_SECONDARY, "secondary": P.SERVER2_4, "hop_index": 1, "hop_count": 1},
        Verdict.LOCAL_HOPS_EXHAUSTED,
    ),
    "secondary is the node itself": (
        {"flags": Flag.HAS_SECONDARY, "secondary": P.SERVER4},
        Verdict.LOCAL_SELF_SECONDARY,
    ),
    "inner ICMP delivered to the stack": ({"inner": "icmp"}, Verdict.LOCAL),
}


@pytest.mark.parametrize("name", list(SERVER_HOSTILE))
def test_server_hostile(name: str, server_fwd: Forwarder) -> None:
    kwargs, verdict = SERVER_HOSTILE[name]
    kwargs = dict(kwargs)
    inner = P.client(flags="A")
    if kwargs.pop("inner", None) == "icmp":
        inner = Ether() / IP(src=P.CLIENT4, dst=P.VIP4) / ICMP()
    st = P.state(None)
    prepare(server_fwd, P.SERVER_CFG, st)
    out = run_both(server_fwd, P.SERVER_CFG, st, bytes(P.gue(inner, **kwargs)))
    assert out.verdict == verdict
