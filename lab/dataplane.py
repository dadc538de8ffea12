"""The lab's XDP hook: attach the forwarder's programs where the topology says, and configure them.

The namespace lab imports this module only when it runs with `--dataplane xdp`, so the
plain-routing lab works on a machine without clang or libbpf. Order matters: the NAPI `pass`
programs on the routers' LAN ports first (XDP_TX from a veth needs NAPI on its peer:
docs/packet-path.md, kernel notes), then the servers (decapsulation ready), then the edges
(they start to encapsulate). The edges get a bootstrap table that keeps every bucket local
(primary = the PoP's servers round robin, no secondary) until the table writer and forwarder
sync own it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from lab.topology import Topology, XdpHook, XdpRole
from popshift.network import NetworkConfig
from schemas.bucket import Bucket
from services.forwarder import build, libbpf
from services.forwarder.layout import BUCKET_BITS, IpNetwork, PeerKind, Verdict
from services.forwarder.loader import Count, Forwarder, Role, in_netns
from services.forwarder.types import NodeConfig

PASS_PROGRAM = "popshift_xdp_pass"
_ROLE = {XdpRole.EDGE: Role.EDGE, XdpRole.SERVER: Role.SERVER}


def _open(topo: Topology, hook: XdpHook) -> Forwarder:
    """Adopt the pinned program of `hook`, or load it built for the lab's table size."""
    defines = {} if topo.table_bits == BUCKET_BITS else {"BUCKET_BITS": topo.table_bits}
    return Forwarder.open(_ROLE[hook.role], hook.host, pin_root=topo.pin_root(), defines=defines)


def peers(topo: Topology, pop: str) -> dict[IpNetwork, tuple[PeerKind, int]]:
    """GUE is accepted from this PoP's LAN (local) and from the other PoPs' LANs (remote)."""
    return {p.lan: (PeerKind.LOCAL if p.name == pop else PeerKind.REMOTE, p.id) for p in topo.pops}


def local_table(servers: tuple[ipaddress.IPv4Address, ...], buckets: int) -> dict[int, Bucket]:
    """Every bucket processed in this PoP: servers round robin, no secondary."""
    return {b: Bucket(primary=str(servers[b % len(servers)])) for b in range(buckets)}


def redirect(topo: Topology, pop: str, tier: int, to: str | None, share: float = 1.0) -> int:
    """Until the table writer owns the edges' tables: send `share` of `pop`'s new connections
    of `tier` to PoP `to`, and return how many buckets point away.

    Primaries stay as they are, so established connections keep their server; the other
    buckets keep `to` as secondary with direction back (draining: connections already living
    in `to` still reach it by second chance). `to=None` makes every bucket local again.
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


def _node_addr(topo: Topology, host: str) -> ipaddress.IPv4Address:
    pop = topo.pop(topo.host(host).pop)
    if host == pop.edge:
        return pop.ingress
    return pop.server_addrs[pop.servers.index(host)]


def _attach_node(topo: Topology, net: NetworkConfig, hook: XdpHook) -> None:
    pop = topo.pop(topo.host(hook.host).pop)
    fwd = _open(topo, hook)
    try:
        fwd.configure(
            NodeConfig(
                pop_id=pop.id, self4=_node_addr(topo, hook.host), mtu=topo.mtu["lan"], fib=True
            )
        )
        fwd.set_peers(peers(topo, pop.name))
        if hook.role is XdpRole.EDGE:
            fwd.set_vips({ipaddress.IPv4Network(v.addr): v.tier for v in topo.vips})
            table = local_table(pop.server_addrs, fwd.buckets)
            for tier in net.tiers:
                fwd.set_tier_hash(tier.id, tier.hash_addresses_only)
                fwd.apply_table_diff(tier.id, table)
        fwd.attach(hook.ifname, netns=topo.netns(hook.host))
    finally:
        fwd.close()


def attach(topo: Topology, net: NetworkConfig) -> None:
    """Load, pin, configure and attach every XDP program of the topology."""
    _attach_pass(topo, [h for h in topo.xdp if h.role is XdpRole.PASS])
    for role in (XdpRole.SERVER, XdpRole.EDGE):
        for hook in topo.xdp:
            if hook.role is role:
                _attach_node(topo, net, hook)


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
