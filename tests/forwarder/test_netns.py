"""End to end in network namespaces: client -> edge (XDP encap) -> server (XDP decap, local
delivery), response straight from the server to the client (direct server return). A table
change then sends new connections to a second server while the first connection keeps working
through the second chance at the new primary."""

from __future__ import annotations

import ipaddress as ia
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.bucket import Bucket
from services.forwarder.layout import PeerKind, Verdict
from services.forwarder.loader import Forwarder, Role, in_netns
from services.forwarder.types import NodeConfig, TableState
from tests.forwarder.conftest import TEST_DEFINES, require_root

pytestmark = pytest.mark.root

VIP = "192.0.2.10"
PORT = 8080
LAB = ia.ip_network("10.100.0.0/16")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@dataclass
class Lab:
    client: str
    edge: str
    s1: str
    s2: str


def _delete_stale() -> None:
    """Remove namespaces an earlier, killed run of this test left (their pid is gone)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        parts = line.split()[0].split("-")
        mine = len(parts) == 4 and parts[0] == "psn" and parts[1].isdigit()
        if mine and not Path(f"/proc/{parts[1]}").exists():
            subprocess.run(["ip", "netns", "del", line.split()[0]], check=False)


def _host(ns: str, dev: str, addr: str, gw: str) -> None:
    for opt in ("tx", "rx", "gso", "tso", "gro"):
        subprocess.run(
            ["ip", "netns", "exec", ns, "ethtool", "-K", dev, opt, "off"],
            capture_output=True,
            check=False,
        )
    sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", gw)
    for key, value in (
        ("net.ipv4.conf.all.rp_filter", "0"),
        (f"net.ipv4.conf.{dev}.rp_filter", "0"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def _warm_neighbours(ns: str, addrs: list[str]) -> None:
    """One datagram each resolves the neighbours, so bpf_fib_lookup finds their MACs."""
    sock = in_netns(ns, lambda: socket.socket(type=socket.SOCK_DGRAM))
    with sock:
        for addr in addrs:
            sock.sendto(b"", (addr, 9))
    time.sleep(0.3)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_root()
    tag = uuid.uuid4().hex[:6]
    _delete_stale()
    lab = Lab(*(f"psn-{os.getpid()}-{tag}-{n}" for n in ("c", "e", "1", "2")))
    try:
        for ns in (lab.client, lab.edge, lab.s1, lab.s2):
            sh("ip", "netns", "add", ns)
        for i, peer in ((0, lab.client), (1, lab.s1), (2, lab.s2)):
            sh(
                "ip",
                "-n",
                lab.edge,
                "link",
                "add",
                f"e{i}",
                "type",
                "veth",
                "peer",
                "name",
                "x0",
                "netns",
                peer,
            )
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab.edge,
                    "ethtool",
                    "-K",
                    f"e{i}",
                    "tx",
                    "off",
                    "rx",
                    "off",
                    "gso",
                    "off",
                    "tso",
                    "off",
                    "gro",
                    "off",
                ],
                capture_output=True,
                check=False,
            )
            sh("ip", "-n", lab.edge, "addr", "add", f"10.100.{i + 1}.1/24", "dev", f"e{i}")
            sh("ip", "-n", lab.edge, "link", "set", f"e{i}", "up")
            _host(peer, "x0", f"10.100.{i + 1}.2/24", f"10.100.{i + 1}.1")
        sh("ip", "-n", lab.edge, "link", "set", "lo", "up")
        for key in (
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ):
            sh("ip", "netns", "exec", lab.edge, "sysctl", "-qw", key)
        for i in range(3):
            sh("ip", "netns", "exec", lab.edge, "sysctl", "-qw", f"net.ipv4.conf.e{i}.rp_filter=0")
        for ns in (lab.s1, lab.s2):  # the VIP lives on the servers' loopback (DSR)
            sh("ip", "-n", ns, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", lab.client, "route", "add", f"{VIP}/32", "via", "10.100.1.1")
        _warm_neighbours(lab.edge, ["10.100.2.2", "10.100.3.2"])
        _warm_neighbours(lab.s2, ["10.100.3.1"])
        yield lab
    finally:
        for ns in (lab.client, lab.edge, lab.s1, lab.s2):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _serve(ns: str, name: bytes, stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A TCP server on VIP:PORT in `ns` that answers every message with its name."""
    listener = in_netns(ns, lambda: socket.create_server((VIP, PORT)))
    listener.settimeout(0.2)

    def loop() -> None:
        conns: list[socket.socket] = []
        while not stop.is_set():
            try:
                c, _ = listener.accept()
                c.settimeout(0.2)
                conns.append(c)
            except TimeoutError:
                pass
            for c in list(conns):
                try:
                    if c.recv(100):
                        c.sendall(name)
                except TimeoutError:
                    continue
                except OSError:
                    conns.remove(c)
        for c in conns:
            c.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return listener, thread


def _ask(sock: socket.socket) -> bytes:
    sock.sendall(b"who?")
    return sock.recv(100)


def test_tcp_through_edge_and_second_chance(lab: Lab) -> None:
    edge = Forwarder.open(Role.EDGE, lab.edge.replace("-", "_"), defines=TEST_DEFINES)
    servers = {
        ns: Forwarder.open(Role.SERVER, ns.replace("-", "_"), defines=TEST_DEFINES)
        for ns in (lab.s1, lab.s2)
    }
    stop = threading.Event()
    serving: list[tuple[socket.socket, threading.Thread]] = []
    conns: list[socket.socket] = []
    s1, s2 = ia.ip_address("10.100.2.2"), ia.ip_address("10.100.3.2")
    peers = {LAB: (PeerKind.LOCAL, 1)}
    try:
        edge.configure(NodeConfig(pop_id=1, self4=ia.IPv4Address("10.100.1.1"), fib=True))
        buckets = range(edge.buckets)
        edge.load_state(
            TableState(
                bucket_bits=TEST_DEFINES["BUCKET_BITS"],
                vips={ia.ip_network(f"{VIP}/32"): 0},
                table={(0, i): Bucket(primary=str(s1)) for i in buckets},
            )
        )
        for i in range(3):
            edge.attach(f"e{i}", netns=lab.edge)
        for ns, addr in ((lab.s1, s1), (lab.s2, s2)):
            servers[ns].configure(NodeConfig(pop_id=1, self4=addr, fib=True))  # type: ignore[arg-type]
            servers[ns].load_state(TableState(peers=peers))
            servers[ns].attach("x0", netns=ns)
        serving = [_serve(lab.s1, b"s1", stop), _serve(lab.s2, b"s2", stop)]

        first = in_netns(lab.client, lambda: socket.create_connection((VIP, PORT), timeout=5))
        conns.append(first)
        assert _ask(first) == b"s1"

        # New primary s2; s1 stays as secondary with direction back: existing flows find s1
        # through the second chance, new connections stay on s2.
        edge.apply_table_diff(0, {i: Bucket(primary=str(s2), secondary=str(s1)) for i in buckets})
        second = in_netns(lab.client, lambda: socket.create_connection((VIP, PORT), timeout=5))
        conns.append(second)
        assert _ask(second) == b"s2"
        assert _ask(first) == b"s1"

        edge_counts = edge.read_counters()[0]
        s2_counts = servers[lab.s2].read_counters()[0]
        s1_counts = servers[lab.s1].read_counters()[0]
        assert edge_counts[Verdict.FWD_INTRA].packets >= 6
        assert s2_counts[Verdict.SECOND_CHANCE].packets >= 1
        assert s2_counts[Verdict.LOCAL].packets >= 3
        assert s1_counts[Verdict.LOCAL].packets >= 4
    finally:
        stop.set()
        for listener, thread in serving:
            thread.join()
            listener.close()
        for s in conns:
            s.close()
        for fwd in (edge, *servers.values()):
            fwd.unpin()
            fwd.close()
