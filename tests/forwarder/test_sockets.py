"""Socket ownership on the server: real loopback sockets found by bpf_skc_lookup_tcp and
bpf_sk_lookup_udp from BPF_PROG_TEST_RUN (which runs in this process's network namespace)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from schemas.bucket import Flag
from services.forwarder import packets as P
from services.forwarder.layout import Verdict
from services.forwarder.loader import Forwarder
from tests.forwarder.harness import prepare, run_both

pytestmark = pytest.mark.root

LO = "127.0.0.1"
SECONDARY = {"flags": Flag.HAS_SECONDARY, "secondary": P.SERVER2_4}


@pytest.fixture
def tcp_pair() -> Iterator[tuple[int, int, socket.socket]]:
    """An established loopback TCP connection: (client port, server port, listener)."""
    listener = socket.socket()
    listener.bind((LO, 0))
    listener.listen()
    cli = socket.create_connection(listener.getsockname())
    srv, _ = listener.accept()
    try:
        yield cli.getsockname()[1], listener.getsockname()[1], listener
    finally:
        for s in (cli, srv, listener):
            s.close()


def owned_by(port: int) -> object:
    return lambda p: p.dport == port


def _run(fwd: Forwarder, inner: object, owns: object) -> Verdict:
    st = P.state(None)
    prepare(fwd, P.SERVER_CFG, st)
    frame = bytes(P.gue(inner, **SECONDARY))  # type: ignore[arg-type]
    return run_both(fwd, P.SERVER_CFG, st, frame, owns=owns).verdict  # type: ignore[arg-type]


def test_established_tcp_socket_keeps_the_flow_local(
    server_fwd: Forwarder, tcp_pair: tuple[int, int, object]
) -> None:
    cport, sport, _ = tcp_pair
    inner = P.client(src=LO, dst=LO, sport=cport, dport=sport, flags="A")
    assert _run(server_fwd, inner, owned_by(sport)) == Verdict.LOCAL


def test_listener_alone_does_not_own_an_ack(
    server_fwd: Forwarder, tcp_pair: tuple[int, int, object]
) -> None:
    _, sport, _ = tcp_pair
    inner = P.client(src=LO, dst=LO, sport=1, dport=sport, flags="A")
    assert _run(server_fwd, inner, lambda p: False) == Verdict.SECOND_CHANCE


def test_connected_udp_socket_owns_the_flow(server_fwd: Forwarder) -> None:
    a, b = socket.socket(type=socket.SOCK_DGRAM), socket.socket(type=socket.SOCK_DGRAM)
    try:
        a.bind((LO, 0))
        b.bind((LO, 0))
        b.connect(a.getsockname())
        inner = P.client(
            proto="udp", src=LO, dst=LO, sport=a.getsockname()[1], dport=b.getsockname()[1]
        )
        port = b.getsockname()[1]
        assert _run(server_fwd, inner, owned_by(port)) == Verdict.LOCAL
    finally:
        a.close()
        b.close()


def test_unconnected_udp_socket_does_not_own(server_fwd: Forwarder) -> None:
    a = socket.socket(type=socket.SOCK_DGRAM)
    try:
        a.bind((LO, 0))
        inner = P.client(proto="udp", src=LO, dst=LO, sport=9, dport=a.getsockname()[1])
        verdict = _run(server_fwd, inner, lambda p: False)
        assert verdict == Verdict.LOCAL  # initial (UDP) packet, direction back
    finally:
        a.close()
