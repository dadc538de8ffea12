"""Nanoseconds per packet of each XDP path, measured with BPF_PROG_TEST_RUN.

One run per syscall (repeat=1; the kernel copies a fresh input frame every call, so the
encapsulating programs never see their own output), the median of the kernel-reported
durations, minus the median of a trivial XDP_TX program measured in the same run. The two are
sampled alternately, call by call, so that load from other processes on a shared machine hits
both alike. Also times the Python model on the same frames and prints its cost as a ratio.
Needs root.

    python bench/xdp_ns_per_packet.py [--runs N]
"""

from __future__ import annotations

import argparse
import ipaddress as ia
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from schemas.bucket import Bucket, Flag
from services.forwarder import build, libbpf
from services.forwarder import packets as P
from services.forwarder.layout import Verdict, XdpAction
from services.forwarder.loader import Forwarder, Role
from services.forwarder.model import Outcome, edge, server
from services.forwarder.types import TableState

logging.getLogger("scapy").setLevel(logging.ERROR)


def kernel_ns(prog_fds: tuple[int, ...], frame: bytes, runs: int) -> list[float]:
    """Median kernel time of one run of each program, one syscall per run, interleaved."""
    samples: list[list[int]] = [[] for _ in prog_fds]
    for _ in range(runs):
        for fd, out in zip(prog_fds, samples, strict=True):
            out.append(libbpf.test_run(fd, frame, repeat=1)[2])
    return [statistics.median(s) for s in samples]


def model_ns(fn: Callable[[], Outcome], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples)


def full_state(entry: Bucket, buckets: int, **kw: Any) -> TableState:
    st = P.state(None, **kw)
    st.bucket_bits = buckets.bit_length() - 1
    st.table = {(t, i): entry for t in (0, 1) for i in range(buckets)}
    return st


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20000)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    edge_fwd = Forwarder.open(Role.EDGE, f"bench_edge_{tag}")
    server_fwd = Forwarder.open(Role.SERVER, f"bench_server_{tag}")
    base = libbpf.BpfObject(build.ensure("baseline"))
    try:
        tx_fd = base.program_fds()["popshift_xdp_tx"]
        st4 = full_state(
            Bucket(
                primary=P.SERVER4,
                secondary=P.REMOTE4,
                inter_pop=True,
                away=True,
                secondary_pop=7,
            ),
            edge_fwd.buckets,
            blocklist={ia.ip_network("203.0.113.0/24")},
        )
        st6 = full_state(Bucket(primary=P.SERVER6), edge_fwd.buckets)
        server_st = P.state(None)
        server_fwd.configure(P.SERVER_CFG)
        server_fwd.load_state(server_st)
        edge_fwd.configure(P.EDGE_CFG)
        syn4 = bytes(P.client(payload=bytes(64)))
        syn6 = bytes(P.client(v6=True, payload=bytes(64)))
        blocked = bytes(P.client(src="203.0.113.9", payload=bytes(64)))
        local = bytes(P.gue(P.client(flags="A", payload=bytes(64))))
        second = bytes(
            P.gue(
                P.client(flags="A", payload=bytes(64)),
                flags=Flag.HAS_SECONDARY,
                secondary=P.SERVER2_4,
            )
        )
        ecfg, scfg = P.EDGE_CFG, P.SERVER_CFG
        paths: list[tuple[str, Forwarder, TableState, bytes, Verdict, Callable[[], Outcome]]] = [
            (
                "edge_encap_v4",
                edge_fwd,
                st4,
                syn4,
                Verdict.FWD_INTRA,
                lambda: edge(syn4, ecfg, st4),
            ),
            (
                "edge_encap_v6",
                edge_fwd,
                st6,
                syn6,
                Verdict.FWD_INTRA,
                lambda: edge(syn6, ecfg, st6),
            ),
            (
                "server_local",
                server_fwd,
                server_st,
                local,
                Verdict.LOCAL,
                lambda: server(local, scfg, server_st),
            ),
            (
                "server_second_chance",
                server_fwd,
                server_st,
                second,
                Verdict.SECOND_CHANCE,
                lambda: server(second, scfg, server_st),
            ),
            (
                "edge_drop_blocklist",
                edge_fwd,
                st4,
                blocked,
                Verdict.DROP_BLOCKLIST,
                lambda: edge(blocked, ecfg, st4),
            ),
        ]
        print(f"{'path':24} {'gross_ns':>9} {'net_ns':>8} {'model_ns':>10} {'model/C':>9}")
        results: dict[str, float] = {}
        for name, fwd, st, frame, verdict, model in paths:
            if fwd is edge_fwd:
                fwd.load_state(st)
            action, out = fwd.test_run(frame)
            expect = model()
            if (XdpAction(action), out) != (expect.action, expect.packet) or (
                expect.verdict != verdict
            ):
                print(f"{name}: C and model disagree, not timing", file=sys.stderr)
                return 1
            tx, gross = kernel_ns((tx_fd, fwd.prog_fd), frame, args.runs)
            py = model_ns(model, max(200, args.runs // 50))
            results[name] = gross - tx
            print(f"{name:24} {gross:9.0f} {gross - tx:8.0f} {py:10.0f} {py / gross:8.0f}x")
            print(f"{'  xdp_tx baseline':24} {tx:9.0f}")
        print(f"xdp_edge_encap_v4_net_ns: {results['edge_encap_v4']:.0f}")
    finally:
        base.close()
        for fwd in (edge_fwd, server_fwd):
            fwd.unpin()
            fwd.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
