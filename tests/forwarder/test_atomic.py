"""Whole-entry bucket changes: a packet sees the old bucket or the new one, never a mix.

One thread flips the bucket of a mid-connection ACK between two entries that differ in every
field (primary, secondary, secondary PoP, flags) while this thread runs the real edge program
over that ACK with BPF_PROG_TEST_RUN, 10^6 times. Every output frame must be exactly the
model's frame for one of the two entries: a torn read (the new primary with the old flags, the
failure that reset connections) would be a third frame. One run per call: the edge rewrites the
packet, so repeat > 1 would run later repetitions on its own output (docs/packet-path.md).
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from schemas.bucket import Bucket
from services.forwarder import libbpf
from services.forwarder import packets as P
from services.forwarder.layout import XdpAction
from services.forwarder.loader import Forwarder, bucket_array
from services.forwarder.model import edge, packet_hash, parse_frame, parse_l4
from services.forwarder.types import TableState

pytestmark = pytest.mark.root
RUNS = 1_000_000

OLD = Bucket(primary=P.SERVER4, secondary=P.REMOTE4, inter_pop=True, away=True, secondary_pop=7)
NEW = Bucket(primary=P.SERVER2_4)


def _with(st: TableState, tier: int, index: int, entry: Bucket) -> TableState:
    out = P.state(OLD)
    out.table = {**st.table, (tier, index): entry}
    return out


def test_a_packet_sees_one_whole_bucket_while_it_flips(edge_fwd: Forwarder) -> None:
    frame = bytes(P.client(flags="A", payload=bytes(32)))
    st = P.state(OLD)
    _, _, parsed = parse_frame(frame)
    parse_l4(frame, parsed)
    index = packet_hash(parsed, 0, st) & (edge_fwd.buckets - 1)
    expected = {
        edge(frame, P.EDGE_CFG, _with(st, 0, index, e)).packet: name
        for name, e in (("old", OLD), ("new", NEW))
    }
    assert len(expected) == 2
    edge_fwd.configure(P.EDGE_CFG)
    edge_fwd.load_state(st)

    stop = threading.Event()
    flips = [0]
    rows = [bucket_array([OLD]), bucket_array([NEW])]

    def flip() -> None:
        where = np.array([index])
        while not stop.is_set():
            flips[0] += 1
            edge_fwd.write_buckets(0, where, rows[flips[0] % 2])

    flipper = threading.Thread(target=flip, name="flipper")
    flipper.start()
    seen: Counter[str] = Counter()
    try:
        for _ in range(RUNS):
            action, out, _ = libbpf.test_run(edge_fwd.prog_fd, frame)
            seen[expected.get(out, out.hex())] += 1
            assert action == XdpAction.TX
    finally:
        stop.set()
        flipper.join()
    torn = {k: n for k, n in seen.items() if k not in ("old", "new")}
    assert not torn, f"frames of neither entry: {torn}"
    assert seen["old"] > 0 and seen["new"] > 0, (seen, flips)
    assert flips[0] > 100
