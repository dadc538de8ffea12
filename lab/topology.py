"""The live lab's topology as data: hosts, links, addresses, routes, catchments and XDP hooks.

Pure: `build()` turns the network description (deploy/config/network.yaml) into a `Topology`
value and lab.namespaces only executes it, so the address plan is unit-tested without root and a
change of PoPs or servers needs no change to the code that builds namespaces.

Per PoP `p` with id `i` (ingress `10.100.i.1` from network.yaml; lan = its /24):

    client-p (eth0 10.10.i.2) --- cl-p 10.10.i.1 [inet] pop-p 10.254.i.1 --- up 10.254.i.2 [p-rtr]
    p-rtr: bridge `lan` 10.100.i.254 with ports `edge`, `s1`, `s2`, ... (the PoP's L2 segment)
    p-edge eth0 10.100.i.1 (ingress: xdp_edge here)  p-sK eth0 10.100.i.(10+K) (xdp_server here)
    p-rtr to-q 10.253.n.1 --- rtr-p [wire-p-q] rtr-q --- to-p 10.253.n.2 q-rtr   (n: pair number)

A `wire-p-q` host holds the inter-PoP latency of network.yaml (one way, each direction):
netem where the kernel has sch_netem, else a userspace relay (lab.delay).

Anycast: `inet` routes every VIP by the client's region (policy routing on the ingress
interface, one table per region) to that region's PoP router; the PoP router routes VIPs to its
edge. Direct server return: servers hold the VIPs on loopback and their default route is the PoP
router, never the edge; ARP for VIPs is suppressed on their links.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from popshift.network import NetworkConfig

DEFAULT_PREFIX = "ps-"
WAN_MTU = 1500  # what clients and the internet carry
LAN_MTU = 1600  # inside and between PoPs: room for the 60-byte GUE overhead of a full packet
VIP_BLOCK = ipaddress.IPv4Network("10.200.0.0/16")
HTTP_PORT = 80
PIN_BASE = Path("/sys/fs/bpf/popshift")


class Role(StrEnum):
    CLIENT = "client"
    INTERNET = "internet"
    ROUTER = "router"
    EDGE = "edge"
    SERVER = "server"
    WIRE = "wire"  # an inter-PoP link with its latency


_COMMON_SYSCTLS = (
    # Return paths differ from arrival paths by design (DSR, anycast): no reverse-path check.
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    # IPv4 only for now: no IPv6 router solicitations or DAD disturbing packet counters.
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)
_FORWARDING_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    # The edge routes VIP traffic back out of the interface it came in on (one-armed).
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.default.send_redirects", "0"),
)
# XDP's fallback for a missing neighbour passes the encapsulated packet to the stack to route;
# its outer source is this node's own address, which the stack drops as martian without this.
_XDP_FALLBACK_SYSCTLS = (
    ("net.ipv4.conf.all.accept_local", "1"),
    ("net.ipv4.conf.default.accept_local", "1"),
)
ROLE_SYSCTLS: Mapping[Role, tuple[tuple[str, str], ...]] = {
    Role.CLIENT: (("net.ipv4.tcp_tw_reuse", "1"),),
    Role.WIRE: (),
    Role.INTERNET: _FORWARDING_SYSCTLS,
    Role.ROUTER: _FORWARDING_SYSCTLS,
    Role.EDGE: _FORWARDING_SYSCTLS + _XDP_FALLBACK_SYSCTLS,
    # VIPs live on lo: never answer ARP for them on a link, never source ARP from them.
    Role.SERVER: _FORWARDING_SYSCTLS
    + _XDP_FALLBACK_SYSCTLS
    + (
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.default.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
        ("net.ipv4.conf.default.arp_announce", "2"),
    ),
}


@dataclass(frozen=True)
class Host:
    name: str
    role: Role
    pop: str = ""  # the PoP it belongs to, or the region a client is in

    def sysctls(self) -> tuple[tuple[str, str], ...]:
        return _COMMON_SYSCTLS + ROLE_SYSCTLS[self.role]


@dataclass(frozen=True)
class End:
    """One end of a veth pair; `addr` with prefix length, `bridge` to enslave it instead."""

    host: str
    ifname: str
    addr: str = ""
    bridge: str = ""


@dataclass(frozen=True)
class Link:
    a: End
    b: End
    mtu: int = WAN_MTU


@dataclass(frozen=True)
class Wire:
    """Frames entering `a` leave `b` after `delay_ms`, and the other way round."""

    host: str
    a: str
    b: str
    delay_ms: float


@dataclass(frozen=True)
class Bridge:
    host: str
    name: str
    addr: str
    mtu: int = LAN_MTU


@dataclass(frozen=True)
class Route:
    host: str
    dst: str  # prefix or "default"
    via: str
    table: int = 0  # 0 = main


@dataclass(frozen=True)
class Rule:
    host: str
    iif: str
    table: int
    pref: int


@dataclass(frozen=True)
class Vip:
    addr: ipaddress.IPv4Address
    tier: int
    tier_name: str


class XdpRole(StrEnum):
    EDGE = "edge"  # popshift_edge (xdp_edge): the PoP's forwarding unit, on the edge's ingress
    SERVER = "server"  # popshift_server (xdp_server): decap + second chance, on a server's link
    PASS = "pass"  # popshift_xdp_pass: NAPI for XDP_TX into a veth peer (docs/packet-path.md)


@dataclass(frozen=True)
class XdpHook:
    host: str
    ifname: str
    role: XdpRole


@dataclass(frozen=True)
class PopPlan:
    """The addresses of one PoP, for the data plane's configuration and for tests."""

    name: str
    id: int
    router: str
    edge: str
    servers: tuple[str, ...]
    ingress: ipaddress.IPv4Address
    lan: ipaddress.IPv4Network
    server_addrs: tuple[ipaddress.IPv4Address, ...]
    client: str


@dataclass(frozen=True)
class Topology:
    hosts: tuple[Host, ...]
    links: tuple[Link, ...]
    wires: tuple[Wire, ...]
    bridges: tuple[Bridge, ...]
    routes: tuple[Route, ...]
    rules: tuple[Rule, ...]
    vips: tuple[Vip, ...]
    pops: tuple[PopPlan, ...]
    catchments: Mapping[str, str]  # client region -> PoP whose anycast route it follows
    xdp: tuple[XdpHook, ...]
    latency_scale: float = 1.0
    prefix: str = DEFAULT_PREFIX
    table_bits: int = 16  # log2 buckets per PoP x tier table (POPSHIFT_TABLE_BITS)
    mtu: Mapping[str, int] = field(default_factory=lambda: {"wan": WAN_MTU, "lan": LAN_MTU})

    def netns(self, host: str) -> str:
        if host not in {h.name for h in self.hosts}:
            raise KeyError(f"unknown lab host {host!r}; known: {[h.name for h in self.hosts]}")
        return self.prefix + host

    def pin_root(self) -> Path:
        """Where this lab's XDP programs and maps are pinned (removed by `Lab.down`)."""
        return PIN_BASE / f"lab-{self.prefix.strip('-') or 'lab'}"

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"unknown lab host {name!r}")

    def pop(self, name: str) -> PopPlan:
        for p in self.pops:
            if p.name == name:
                return p
        raise KeyError(f"unknown PoP {name!r}")

    def by_role(self, role: Role) -> list[Host]:
        return [h for h in self.hosts if h.role is role]

    def ends(self) -> Iterator[End]:
        for link in self.links:
            yield link.a
            yield link.b

    def vip(self, tier_name: str | None = None) -> ipaddress.IPv4Address:
        """The VIP of a tier (default: the first tier's)."""
        for v in self.vips:
            if tier_name is None or v.tier_name == tier_name:
                return v.addr
        raise KeyError(f"no VIP for tier {tier_name!r}")

    def server_identity(self, host: str) -> tuple[str, str]:
        """(pop, server) as the lab HTTP server on `host` reports itself."""
        return self.host(host).pop, host


def _mesh(
    net: NetworkConfig, pops: list[PopPlan], scale: float
) -> tuple[list[Host], list[Link], list[Wire], list[Route]]:
    """PoP routers joined pairwise through a wire host that adds the pair's latency.

    A pair without a latency in network.yaml gets no direct link: its traffic crosses `inet`.
    """
    hosts: list[Host] = []
    links: list[Link] = []
    wires: list[Wire] = []
    routes: list[Route] = []
    n = 0
    for i, a in enumerate(pops):
        for b in pops[i + 1 :]:
            n += 1
            ms = net.latency(a.name, b.name)
            if ms is None:
                continue
            sub = ipaddress.IPv4Network(f"10.253.{n}.0/24")
            wire = f"wire-{a.name}-{b.name}"
            hosts.append(Host(wire, Role.WIRE))
            links.append(
                Link(
                    End(a.router, f"to-{b.name}", f"{sub[1]}/24"),
                    End(wire, f"rtr-{a.name}"),
                    LAN_MTU,
                )
            )
            links.append(
                Link(
                    End(b.router, f"to-{a.name}", f"{sub[2]}/24"),
                    End(wire, f"rtr-{b.name}"),
                    LAN_MTU,
                )
            )
            wires.append(Wire(wire, f"rtr-{a.name}", f"rtr-{b.name}", ms * scale))
            routes.append(Route(a.router, str(b.lan), str(sub[2])))
            routes.append(Route(b.router, str(a.lan), str(sub[1])))
    return hosts, links, wires, routes


def _check_plan(net: NetworkConfig, servers_per_pop: int) -> None:
    if not 1 <= servers_per_pop <= 200:
        raise ValueError("servers_per_pop must be 1..200")
    for p in net.pops:
        if not 1 <= p.id <= 250:
            raise ValueError(f"PoP {p.name}: id {p.id} does not fit the lab's address plan")
        if not isinstance(p.ingress, ipaddress.IPv4Address):
            raise ValueError(f"PoP {p.name}: the lab is IPv4 only")
        host = int(p.ingress) & 0xFF
        if host == 254 or 10 < host <= 10 + servers_per_pop:
            raise ValueError(f"PoP {p.name}: ingress {p.ingress} collides with lab addresses")


def build(
    net: NetworkConfig,
    servers_per_pop: int = 2,
    latency_scale: float = 1.0,
    catchments: Mapping[str, str] | None = None,
    prefix: str = DEFAULT_PREFIX,
    table_bits: int = 16,
) -> Topology:
    """The lab for `net`: one client region per PoP, each caught by its own PoP by default."""
    _check_plan(net, servers_per_pop)
    names = net.pop_names
    catch = dict(catchments or {n: n for n in names})
    if set(catch) - set(names) or set(catch.values()) - set(names):
        raise ValueError(f"catchments name unknown regions or PoPs: {catch}")
    vips = tuple(
        Vip(ipaddress.IPv4Address(int(VIP_BLOCK[0]) + (t.id << 8) + 1), t.id, t.name)
        for t in net.tiers
    )
    hosts = [Host("inet", Role.INTERNET)]
    links: list[Link] = []
    bridges: list[Bridge] = []
    routes: list[Route] = []
    rules: list[Rule] = []
    xdp: list[XdpHook] = []
    pops: list[PopPlan] = []
    for p in net.pops:
        i, name = p.id, p.name
        ingress = ipaddress.IPv4Address(str(p.ingress))
        lan = ipaddress.IPv4Network(f"{ingress}/24", strict=False)
        rtr, edge, client = f"{name}-rtr", f"{name}-edge", f"client-{name}"
        servers = tuple(f"{name}-s{k}" for k in range(1, servers_per_pop + 1))
        server_addrs = tuple(lan[10 + k] for k in range(1, servers_per_pop + 1))
        outside = [str(a) for a in server_addrs if not p.serves(str(a))]
        if outside:  # the ingest and the table writers would refuse them (popshift/admission.py)
            raise ValueError(f"PoP {name}: servers {outside} are outside its server_prefixes")
        hosts += [Host(client, Role.CLIENT, name), Host(rtr, Role.ROUTER, name)]
        hosts += [Host(edge, Role.EDGE, name)]
        hosts += [Host(s, Role.SERVER, name) for s in servers]
        links.append(
            Link(
                End(client, "eth0", f"10.10.{i}.2/24"), End("inet", f"cl-{name}", f"10.10.{i}.1/24")
            )
        )
        links.append(
            Link(
                End(rtr, "uplink", f"10.254.{i}.2/24"),
                End("inet", f"pop-{name}", f"10.254.{i}.1/24"),
            )
        )
        bridges.append(Bridge(rtr, "lan", f"{lan[254]}/24"))
        # The router's port toward a node is named after it: `edge`, `s1`, `s2`, ...
        ports = [(edge, "edge", ingress)]
        ports += [(s, s.rsplit("-", 1)[1], a) for s, a in zip(servers, server_addrs, strict=True)]
        for node, port, addr in ports:
            node_end = End(node, "eth0", f"{addr}/24")
            links.append(Link(node_end, End(rtr, port, bridge="lan"), mtu=LAN_MTU))
            xdp.append(XdpHook(rtr, port, XdpRole.PASS))
        xdp.append(XdpHook(edge, "eth0", XdpRole.EDGE))
        xdp += [XdpHook(s, "eth0", XdpRole.SERVER) for s in servers]
        routes.append(Route(client, "default", f"10.10.{i}.1"))
        routes.append(Route("inet", str(lan), f"10.254.{i}.2"))
        routes.append(Route(rtr, "default", f"10.254.{i}.1"))
        routes += [Route(rtr, f"{v.addr}/32", str(ingress)) for v in vips]
        routes.append(Route(edge, "default", str(lan[254])))
        # Plain routing until XDP takes over (and XDP's fallback for what it passes): one server.
        routes += [Route(edge, f"{v.addr}/32", str(server_addrs[0])) for v in vips]
        routes += [Route(s, "default", str(lan[254])) for s in servers]
        pops.append(PopPlan(name, i, rtr, edge, servers, ingress, lan, server_addrs, client))
    for region, pop_name in catch.items():
        rid = net.pop(region).id
        table = 100 + rid
        rules.append(Rule("inet", f"cl-{region}", table, pref=1000 + rid))
        via = f"10.254.{net.pop(pop_name).id}.2"
        routes += [Route("inet", f"{v.addr}/32", via, table) for v in vips]
    mesh_hosts, mesh_links, wires, mesh_routes = _mesh(net, pops, latency_scale)
    hosts += mesh_hosts
    links += mesh_links
    routes += mesh_routes
    return Topology(
        hosts=tuple(hosts),
        links=tuple(links),
        wires=tuple(wires),
        bridges=tuple(bridges),
        routes=tuple(routes),
        rules=tuple(rules),
        vips=vips,
        pops=tuple(pops),
        catchments=catch,
        xdp=tuple(xdp),
        latency_scale=latency_scale,
        prefix=prefix,
        table_bits=table_bits,
    )
