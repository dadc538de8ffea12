"""The data plane's shortcuts answer exactly what the tries and the hash map answer.

- Blocklist prefilter: a clear bit must never hide a trie match (the program then skips the
  trie). Checked in Python against the model's LPM for prefixes of every shape, and through
  the real program against the model.
- Direct-mapped IPv4 host VIPs: empty slots, a slot shared by several VIPs, VIPs removed and
  IPv4-mapped IPv6 host VIPs still give the LPM answer.
- Table writes: the numpy fast path, the entry path and the batch read agree byte for byte.
"""

from __future__ import annotations

import ipaddress as ia
import random

import numpy as np
import pytest

from schemas.bucket import Bucket
from services.forwarder import packets as P
from services.forwarder.layout import BUCKET_DTYPE, FilterRow, IpNetwork, Vip4SlotKind, addr16
from services.forwarder.loader import Forwarder, blocklist_filter, bucket_array, vip4_slots
from services.forwarder.model import lpm
from tests.forwarder.harness import prepare, run_both

ENTRY = Bucket(primary=P.SERVER4)
PREFIXES: list[IpNetwork] = [
    ia.ip_network("203.0.113.0/24"),
    ia.ip_network("198.51.100.7/32"),
    ia.ip_network("100.64.0.0/10"),  # shorter than the 16-bit selector
    ia.ip_network("2001:db8:1::/48"),
    ia.ip_network("fc00::/7"),  # IPv6 shorter than 16 bits
    ia.ip_network("::ffff:192.0.2.0/120"),  # IPv4-mapped written as IPv6
]
COVERING: list[IpNetwork] = [ia.ip_network("::/0"), ia.ip_network("::ffff:0:0/96")]


def _selected(bits: np.ndarray, addr: bytes) -> bool:
    row = FilterRow.V4 if addr[:12] == bytes(10) + b"\xff\xff" else FilterRow.V6
    sel = int.from_bytes(addr[12:14] if row == FilterRow.V4 else addr[0:2], "big")
    return bool(bits[row][sel >> 3] >> (sel & 7) & 1)


def _addresses(rnd: random.Random, nets: list[IpNetwork]) -> list[bytes]:
    out = []
    for net in nets:  # inside, at both ends, and just outside every prefix
        first, last = int(net.network_address), int(net.broadcast_address)
        cls = ia.IPv4Address if net.version == 4 else ia.IPv6Address
        top = (1 << (32 if net.version == 4 else 128)) - 1
        for n in (first, last, max(first - 1, 0), min(last + 1, top), rnd.randint(first, last)):
            out.append(addr16(cls(n)))
    out += [addr16(ia.IPv4Address(rnd.getrandbits(32))) for _ in range(300)]
    out += [addr16(ia.IPv6Address(rnd.getrandbits(128))) for _ in range(300)]
    return out


@pytest.mark.parametrize("nets", [[], PREFIXES, PREFIXES + COVERING[1:], COVERING[:1]])
def test_prefilter_never_hides_a_match(nets: list[IpNetwork]) -> None:
    bits = blocklist_filter(nets)
    table = dict.fromkeys(nets, True)
    for addr in _addresses(random.Random(7), PREFIXES + COVERING):
        if lpm(table, addr):
            assert _selected(bits, addr), ia.IPv6Address(addr)
    if not nets:
        assert not bits.any()
    if COVERING[0] in nets:
        assert bits.all()


def test_prefilter_is_selective() -> None:
    bits = blocklist_filter([ia.ip_network("203.0.113.0/24")])
    assert _selected(bits, addr16(ia.ip_address("203.0.5.5")))
    assert not _selected(bits, addr16(ia.ip_address("198.51.100.7")))
    assert not bits[FilterRow.V6][1:].any()  # only selector 0 (where ::ffff:0:0/96 lives)


@pytest.mark.parametrize("nets", [PREFIXES, PREFIXES + COVERING[1:], COVERING[:1], []])
def test_blocklist_through_the_program(edge_fwd: Forwarder, nets: list[IpNetwork]) -> None:
    st = P.state(ENTRY, blocklist=set(nets))
    prepare(edge_fwd, P.EDGE_CFG, st)
    srcs4 = ["203.0.113.9", "203.0.114.9", "198.51.100.7", "198.51.100.8", "100.127.1.1"]
    srcs4 += ["100.128.0.1", "192.0.2.77", "10.0.0.9"]
    srcs6 = ["2001:db8:1::7", "2001:db8:2::7", "fd12::1", "fc00::1", "fe80::1"]
    srcs6 += ["::ffff:192.0.2.9", "::ffff:10.0.0.9"]
    for src in srcs4:
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client(src=src)))
    for src in srcs6:
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client(v6=True, src=src)))


def test_blocklist_shrinks_and_grows(edge_fwd: Forwarder) -> None:
    for nets in ([ia.ip_network("198.51.100.0/24")], [], [ia.ip_network("198.0.0.0/8")], []):
        st = P.state(ENTRY, blocklist=set(nets))
        prepare(edge_fwd, P.EDGE_CFG, st)
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client()))


def test_vip4_slots_kinds() -> None:
    a, b, c = (addr16(ia.ip_address(x)) for x in ("192.0.2.10", "198.51.2.10", "192.0.2.11"))
    v6 = addr16(ia.ip_address("2001:db8::10"))
    slots = vip4_slots({a: 1, b: 2, c: 3, v6: 0}, 4096)
    assert slots["kind"][0x20A] == Vip4SlotKind.MANY  # 192.0.2.10 and 198.51.2.10 share it
    assert slots["kind"][0x20B] == Vip4SlotKind.ONE
    assert bytes(slots["addr"][0x20B]) == bytes([192, 0, 2, 11])
    assert slots["value"][0x20B]["tier"] == 3
    assert (slots["kind"] != Vip4SlotKind.EMPTY).sum() == 2


def test_host_vips_through_the_program(edge_fwd: Forwarder) -> None:
    """Shared slots, empty slots, prefix-only matches and IPv4-mapped IPv6 host VIPs."""
    st = P.state(ENTRY)
    st.vips = {
        ia.ip_network("192.0.2.0/24"): 0,
        ia.ip_network("192.0.2.10/32"): 1,
        ia.ip_network("198.51.2.10/32"): 2,  # same slot as 192.0.2.10
        ia.ip_network("::ffff:203.0.113.5/128"): 3,  # an IPv4 host VIP written as IPv6
        ia.ip_network("203.0.113.6/32"): 9,  # tier out of range
        ia.ip_network("2001:db8::10/128"): 1,
    }
    prepare(edge_fwd, P.EDGE_CFG, st)
    dsts = ["192.0.2.10", "198.51.2.10", "192.0.2.11", "203.0.113.5", "203.0.113.6"]
    dsts += ["203.0.113.7", "10.9.9.9", "198.51.2.11"]
    for dst in dsts:
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client(dst=dst)))
    for dst in ["::ffff:192.0.2.10", "::ffff:203.0.113.5", "2001:db8::10", "2001:db8::11"]:
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client(v6=True, dst=dst)))
    del st.vips[ia.ip_network("198.51.2.10/32")], st.vips[ia.ip_network("192.0.2.10/32")]
    prepare(edge_fwd, P.EDGE_CFG, st)
    for dst in ["192.0.2.10", "198.51.2.10", "203.0.113.5"]:
        run_both(edge_fwd, P.EDGE_CFG, st, bytes(P.client(dst=dst)))


def _entries(n: int, seed: int) -> dict[int, Bucket | None]:
    rnd = random.Random(seed)
    servers = [f"10.0.1.{i}" for i in range(1, 5)] + ["fd00:1::1"]
    out: dict[int, Bucket | None] = {}
    for i in range(n):
        k = rnd.randrange(4)
        if k == 0:
            out[i] = None
        elif k == 1:
            out[i] = Bucket(
                primary=rnd.choice(servers),
                secondary="10.7.0.1",
                inter_pop=True,
                away=rnd.random() < 0.5,
                secondary_pop=7,
            )
        else:
            out[i] = Bucket(primary=rnd.choice(servers), secondary=rnd.choice(servers))
    return out


def test_bucket_array_matches_one_by_one() -> None:
    entries = _entries(500, 1)
    rows = bucket_array(entries.values())
    for i, e in entries.items():
        want = bytes(BUCKET_DTYPE.itemsize)
        if e is not None:
            want = addr16(e.primary) + addr16(e.secondary)
            want += e.secondary_pop.to_bytes(2, "little") + bytes([e.flags]) + bytes(5)
        assert rows[i].tobytes() == want, i


def test_write_buckets_read_table_and_entries_agree(edge_fwd: Forwarder) -> None:
    n = edge_fwd.buckets
    entries = _entries(n, 2)
    edge_fwd.apply_table_diff(1, entries)
    image = edge_fwd.read_table(1)
    assert image.tobytes() == bucket_array(entries[i] for i in range(n)).tobytes()
    other = bucket_array(_entries(n, 3)[i] for i in range(n))
    changed = np.array([1, 5, n - 1])
    edge_fwd.write_buckets(1, changed, other[changed])
    image[changed] = other[changed]
    assert edge_fwd.read_table(1).tobytes() == image.tobytes()
    assert edge_fwd.read_table(0).tobytes() != image.tobytes() or n == 0
    for bad in ([n], [-1]):
        with pytest.raises(ValueError):
            edge_fwd.write_buckets(1, np.array(bad), other[:1])
    with pytest.raises(ValueError):
        edge_fwd.write_buckets(edge_fwd.tiers, changed, other[changed])
    with pytest.raises(ValueError):
        edge_fwd.write_buckets(1, changed, other[:2])
    assert edge_fwd.read_table(1).tobytes() == image.tobytes()  # nothing written on errors
