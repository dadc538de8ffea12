"""Property: random flows and tables through the C programs and the model give the same verdict
and the same output bytes."""

from __future__ import annotations

import dataclasses
import ipaddress as ia

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.bucket import Bucket, Flag
from services.forwarder import packets as P
from services.forwarder.layout import TierFlag
from services.forwarder.loader import Forwarder
from services.forwarder.types import TableState
from tests.forwarder.harness import prepare, run_both

pytestmark = pytest.mark.root

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

ipv4 = st.integers(0x0A000000, 0x0A00FFFF).map(ia.IPv4Address)
ipv6 = st.integers(0, 2**16).map(lambda n: ia.IPv6Address((0xFD00 << 112) | n))
addr = st.one_of(ipv4, ipv6).map(str)


@st.composite
def entries(draw: st.DrawFn) -> Bucket | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    secondary = draw(st.none() | addr)
    inter = secondary is not None and draw(st.booleans())
    return Bucket(
        primary=draw(addr),
        secondary=secondary,
        inter_pop=inter,
        away=secondary is not None and draw(st.booleans()),
        secondary_pop=draw(st.integers(1, 65535)) if inter else 0,
    )


@st.composite
def tables(draw: st.DrawFn) -> TableState:
    s = P.state(None, tier_flags={t: TierFlag.HASH_ADDRS for t in (0, 1) if draw(st.booleans())})
    s.table = {
        (t, i): e
        for t in (0, 1)
        for i in range(1 << P.BUCKET_BITS)
        if (e := draw(entries())) is not None
    }
    return s


@st.composite
def client_frames(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    frame = P.client(
        v6=v6,
        proto=draw(st.sampled_from(["tcp", "udp"])),
        flags=draw(st.sampled_from(["S", "A", "SA", "PA", "F", "R"])),
        sport=draw(st.integers(1, 65535)),
        dport=draw(st.integers(1, 65535)),
        payload=b"\xab" * draw(st.sampled_from([0, 1, 100, 1380, 1400, 1450])),
        src=str(draw(ipv6 if v6 else ipv4)) if draw(st.booleans()) else None,
    )
    if not v6:
        from scapy.layers.inet import IP

        frame[IP].tos = draw(st.integers(0, 255))
        frame[IP].flags = draw(st.sampled_from([0, 2]))
    return bytes(frame)


@given(frame=client_frames(), tables=tables(), mtu=st.integers(1280, 1600))
@SETTINGS
def test_edge_matches_model(
    edge_fwd: Forwarder, frame: bytes, tables: TableState, mtu: int
) -> None:
    cfg = dataclasses.replace(P.EDGE_CFG, mtu=mtu)
    prepare(edge_fwd, cfg, tables)
    run_both(edge_fwd, cfg, tables, frame)


@given(
    frame=client_frames(),
    priv=st.integers(0, 15),
    secondary=st.none() | addr,
    hops=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    outer_src=st.sampled_from([P.EDGE4, P.REMOTE4, "192.168.1.1", P.SERVER4]),
    outer_v6=st.booleans(),
)
@SETTINGS
def test_server_matches_model(
    server_fwd: Forwarder,
    frame: bytes,
    priv: int,
    secondary: str | None,
    hops: tuple[int, int],
    outer_src: str,
    outer_v6: bool,
) -> None:
    from scapy.layers.l2 import Ether

    flags = priv & ~Flag.HAS_SECONDARY | (Flag.HAS_SECONDARY if secondary else 0)
    src, dst = (P.EDGE6, P.SERVER6) if outer_v6 else (outer_src, P.SERVER4)
    gue = P.gue(
        Ether(frame),
        outer_src=src,
        outer_dst=dst,
        flags=flags,
        secondary=secondary,
        hop_index=min(hops),
        hop_count=max(hops),
    )
    tables = P.state(None)
    prepare(server_fwd, P.SERVER_CFG, tables)
    run_both(server_fwd, P.SERVER_CFG, tables, bytes(gue))
