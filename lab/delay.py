"""A wire with a fixed one-way delay, in user space, for kernels built without sch_netem.

The lab's inter-PoP latency (network.yaml `latency_ms`) is what makes forwarding cost something;
`tc qdisc ... netem delay` is the usual way to add it, but some kernels (this CI machine's) lack
sch_netem. This relay runs in a `wire-p-q` namespace between two veth ends: every frame that
arrives on one leaves the other `delay_ms` later, in order, both directions. It is transparent
at layer 2 (ARP crosses it too), so the routers on either side see a plain link.

    python -m lab.delay --a a --b b --delay-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from dataclasses import dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # our own transmissions, seen by the packet socket of the egress device
MAX_FRAME = 65536


@dataclass
class Direction:
    """One direction of the wire and its counters."""

    src: socket.socket
    dst: socket.socket
    delay_s: float
    frames: int = 0
    dropped: int = 0

    def send(self, frame: bytes) -> None:
        try:
            self.dst.send(frame)
            self.frames += 1
        except OSError:
            self.dropped += 1  # a full queue or a device going down: like a lossy wire

    def pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take every frame waiting on `src` and schedule it on `dst` after the delay."""
        while True:
            try:
                frame, addr = self.src.recvfrom(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            loop.call_later(self.delay_s, self.send, frame)


def open_port(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


async def relay(a: str, b: str, delay_ms: float) -> None:
    """Relay frames between interfaces `a` and `b` until cancelled."""
    loop = asyncio.get_running_loop()
    port_a, port_b = open_port(a), open_port(b)
    directions = (
        Direction(port_a, port_b, delay_ms / 1000.0),
        Direction(port_b, port_a, delay_ms / 1000.0),
    )
    for d in directions:
        loop.add_reader(d.src.fileno(), d.pump, loop)
    try:
        await asyncio.Event().wait()
    finally:
        for d in directions:
            loop.remove_reader(d.src.fileno())
        port_a.close()
        port_b.close()
        print(
            f"delay {a}<->{b}: "
            + ", ".join(f"{d.frames} sent {d.dropped} dropped" for d in directions)
        )


async def _main(args: argparse.Namespace) -> None:
    task = asyncio.ensure_future(relay(args.a, args.b, args.delay_ms))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="userspace delay wire (no sch_netem)")
    parser.add_argument("--a", required=True, help="one interface")
    parser.add_argument("--b", required=True, help="the other interface")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
