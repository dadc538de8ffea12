"""The lab's XDP hook: every edge and server is configured the product's way, by a node file
and the forwarder sync that reads it.

For each node the lab writes the YAML an operator would (deploy/config/node-example.yaml:
role, PoP, node, interface, netns, address, next hop, MTU, peers, VIPs and bootstrap servers
of an edge) and starts `python -m services.forwarder.sync --node-file FILE`, which loads and
pins the program, writes its maps, gives the edge a local bootstrap table and attaches it. What
is not a node's configuration stays the lab's: the NAPI `pass` programs on the routers' LAN
ports (XDP_TX into a veth needs NAPI on its peer: docs/packet-path.md, kernel notes) and the
order, servers first (decapsulation ready), then edges (they start to encapsulate).

The namespace lab imports this module only with `--dataplane xdp`, so the plain-routing lab
works on a machine without clang or libbpf.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from lab.topology import Topology, XdpHook, XdpRole
from schemas.bucket import Bucket
from services.forwarder import build, libbpf
from services.forwarder.layout import BUCKET_BITS, Verdict
from services.forwarder.loader import Count, Forwarder, Role, in_netns
from services.forwarder.node_config import Addresses, NodeFile, Peer, Vip

PASS_PROGRAM = "popshift_xdp_pass"
_ROLE = {XdpRole.EDGE: Role.EDGE, XdpRole.SERVER: Role.SERVER}

SyncStarter = Callable[[str, Path], subprocess.Popen[bytes]]
"""Starts the forwarder sync of a node (its host name) with its node file; returns the process."""


class DataPlaneError(RuntimeError):
    """A node's sync did not configure and attach it; the message says where its log is."""


def _open(topo: Topology, hook: XdpHook) -> Forwarder:
    """Adopt the pinned program of `hook` (its sync loaded it for the lab's table size)."""
    defines = {} if topo.table_bits == BUCKET_BITS else {"BUCKET_BITS": topo.table_bits}
    return Forwarder.open(_ROLE[hook.role], hook.host, pin_root=topo.pin_root(), defines=defines)


def _node_addr(topo: Topology, host: str) -> ipaddress.IPv4Address:
    pop = topo.pop(topo.host(host).pop)
    if host == pop.edge:
        return pop.ingress
    return pop.server_addrs[pop.servers.index(host)]


def node_file(topo: Topology, hook: XdpHook) -> NodeFile:
    """The node file of one edge or server, as its operator would write it."""
    pop = topo.pop(topo.host(hook.host).pop)
    edge = hook.role is XdpRole.EDGE
    return NodeFile(
        role="edge" if edge else "server",
        pop=pop.name,
        node=hook.host,
        interface=hook.ifname,
        netns=topo.netns(hook.host),
        addresses=Addresses(ipv4=_node_addr(topo, hook.host)),
        next_hop="fib",
        mtu=topo.mtu["lan"],
        # GUE from every PoP's LAN: this PoP's is local, the others' remote
        peers=[Peer(prefix=p.lan, pop=p.name) for p in topo.pops],
        vips=[Vip(prefix=ipaddress.IPv4Network(v.addr), tier=v.tier) for v in topo.vips]
        if edge
        else [],
        bootstrap_servers=list(pop.server_addrs) if edge else [],
    )


def write_node_file(topo: Topology, hook: XdpHook, directory: Path) -> Path:
    path = directory / f"{hook.host}.node.yaml"
    data = node_file(topo, hook).model_dump(mode="json")
    path.write_text(
        f"# {hook.host}: written by lab.dataplane\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def xdp_prog_id(topo: Topology, hook: XdpHook) -> int:
    """The id of the XDP program on the hook's interface, 0 if none."""
    out = subprocess.run(
        ["ip", "-n", topo.netns(hook.host), "-j", "link", "show", "dev", hook.ifname],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return int(json.loads(out.stdout)[0].get("xdp", {}).get("prog", {}).get("id", 0))


def _wait_attached(
    topo: Topology, started: dict[XdpHook, subprocess.Popen[bytes]], timeout_s: float
) -> None:
    """Until every node's sync attached its program (it configures the maps first)."""
    deadline = time.monotonic() + timeout_s
    pending = dict(started)
    while pending:
        for hook, proc in list(pending.items()):
            if xdp_prog_id(topo, hook):
                del pending[hook]
            elif proc.poll() is not None:
                raise DataPlaneError(
                    f"the sync of {hook.host} exited ({proc.returncode}): see its log"
                )
        if pending and time.monotonic() > deadline:
            hosts = sorted(h.host for h in pending)
            raise DataPlaneError(f"no XDP attached within {timeout_s:.0f}s on {hosts}")
        time.sleep(0.1 if pending else 0.0)


def _attach_fd(ifname: str, fd: int) -> None:
    libbpf.xdp_attach(socket.if_nametoindex(ifname), fd, 0)


def _attach_pass(topo: Topology, hooks: list[XdpHook]) -> None:
    obj = libbpf.BpfObject(build.ensure("baseline"))
    try:
        fd = obj.program_fds()[PASS_PROGRAM]
        for hook in hooks:
            in_netns(topo.netns(hook.host), functools.partial(_attach_fd, hook.ifname, fd))
    finally:
        obj.close()  # the netlink attachments keep the program alive


def attach(
    topo: Topology, start_sync: SyncStarter, node_dir: Path, timeout_s: float = 60.0
) -> None:
    """NAPI programs on the router ports, then a node file and a sync per server, then per
    edge, each role attached before the next starts."""
    node_dir.mkdir(parents=True, exist_ok=True)
    _attach_pass(topo, [h for h in topo.xdp if h.role is XdpRole.PASS])
    for role in (XdpRole.SERVER, XdpRole.EDGE):
        started = {
            hook: start_sync(hook.host, write_node_file(topo, hook, node_dir))
            for hook in topo.xdp
            if hook.role is role
        }
        _wait_attached(topo, started, timeout_s)


def local_table(servers: tuple[ipaddress.IPv4Address, ...], buckets: int) -> dict[int, Bucket]:
    """Every bucket processed in this PoP: servers round robin, no secondary."""
    return {b: Bucket(primary=str(servers[b % len(servers)])) for b in range(buckets)}


def redirect(topo: Topology, pop: str, tier: int, to: str | None, share: float = 1.0) -> int:
    """By hand, with no table writer: send `share` of `pop`'s new connections of `tier` to PoP
    `to`, and return how many buckets point away.

    Written straight into the edge's maps. The hand-built lab's syncs follow no Redis table
    and run without a lease (lab.namespaces), so nothing renews this table and nothing cuts
    it back either: it holds until the next `redirect`. Primaries stay as they are, so
    established connections keep their server; the other buckets keep `to` as secondary with
    direction back (draining: connections already living in `to` still reach it by second
    chance). `to=None` makes every bucket local again.
    """
    src = topo.pop(pop)
    hook = next(h for h in topo.xdp if h.host == src.edge)
    fwd = _open(topo, hook)
    try:
        away = round(min(max(share, 0.0), 1.0) * fwd.buckets) if to else 0
        table = local_table(src.server_addrs, fwd.buckets)
        if to is not None:
            dst = topo.pop(to)
            for b, entry in table.items():
                table[b] = Bucket(
                    primary=entry.primary,
                    secondary=str(dst.ingress),
                    inter_pop=True,
                    away=b < away,
                    secondary_pop=dst.id,
                )
        fwd.apply_table_diff(tier, table)
        return away
    finally:
        fwd.close()


def counters(topo: Topology, host: str) -> dict[Verdict, Count]:
    """The verdict counters of `host`'s program, summed over tiers."""
    hook = next(h for h in topo.xdp if h.host == host and h.role is not XdpRole.PASS)
    if not (topo.pin_root() / host / "prog").exists():
        raise FileNotFoundError(f"no XDP program pinned for {host}: is the lab up with xdp?")
    fwd = _open(topo, hook)
    try:
        total: dict[Verdict, Count] = {v: Count(0, 0) for v in Verdict}
        for per_tier in fwd.read_counters().values():
            for v, c in per_tier.items():
                total[v] = Count(total[v].packets + c.packets, total[v].bytes + c.bytes)
        return total
    finally:
        fwd.close()
