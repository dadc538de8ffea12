"""The lab's address plan, checked without root: what lab.namespaces builds is exactly this data."""

from __future__ import annotations

import ipaddress

import pytest

from lab.namespaces import DEFAULT_NETWORK
from lab.topology import LAN_MTU, Role, XdpRole, build
from popshift.network import NetworkConfig, load_network


@pytest.fixture(scope="module")
def net() -> NetworkConfig:
    return load_network(DEFAULT_NETWORK)


def test_every_pop_has_an_edge_a_router_and_servers_at_its_ingress(net: NetworkConfig) -> None:
    topo = build(net, servers_per_pop=3)
    for cfg in net.pops:
        pop = topo.pop(cfg.name)
        assert pop.ingress == cfg.ingress
        assert len(pop.servers) == len(pop.server_addrs) == 3
        assert all(a in pop.lan and cfg.serves(str(a)) for a in pop.server_addrs)
        assert {topo.host(s).role for s in pop.servers} == {Role.SERVER}
        assert topo.host(pop.edge).role is Role.EDGE


def test_servers_outside_their_pops_server_prefixes_are_refused(net: NetworkConfig) -> None:
    narrow = net.pops[0].model_copy(
        update={"server_prefixes": [ipaddress.ip_network("10.9.0.0/24")]}
    )
    with pytest.raises(ValueError, match="outside its server_prefixes"):
        build(net.model_copy(update={"pops": [narrow, *net.pops[1:]]}))


def test_addresses_are_unique_and_names_fit_the_kernel(net: NetworkConfig) -> None:
    topo = build(net)
    addrs = [e.addr.split("/")[0] for e in topo.ends() if e.addr]
    addrs += [b.addr.split("/")[0] for b in topo.bridges]
    assert len(addrs) == len(set(addrs))
    assert all(len(e.ifname) <= 15 for e in topo.ends())
    assert all(topo.netns(h.name).startswith("ps-") for h in topo.hosts)
    ends = [(e.host, e.ifname) for e in topo.ends()]
    assert len(ends) == len(set(ends))


def test_catchments_route_each_region_to_its_own_pop_by_default(net: NetworkConfig) -> None:
    topo = build(net)
    for region in net.pop_names:
        rule = next(r for r in topo.rules if r.iif == f"cl-{region}")
        vip_routes = [r for r in topo.routes if r.host == "inet" and r.table == rule.table]
        assert {r.dst for r in vip_routes} == {f"{v.addr}/32" for v in topo.vips}
        uplink = next(e for lk in topo.links for e in (lk.a, lk.b) if e.host == f"{region}-rtr"
                      and e.ifname == "uplink")  # fmt: skip
        assert {r.via for r in vip_routes} == {uplink.addr.split("/")[0]}


def test_catchments_can_send_a_region_elsewhere(net: NetworkConfig) -> None:
    topo = build(net, catchments={"a": "b", "b": "b", "c": "c"})
    table = next(r.table for r in topo.rules if r.iif == "cl-a")
    assert {r.via for r in topo.routes if r.table == table} == {"10.254.2.2"}
    with pytest.raises(ValueError, match="unknown"):
        build(net, catchments={"a": "z"})


def test_servers_return_directly_not_through_the_edge(net: NetworkConfig) -> None:
    """DSR: a server's default route is the PoP router, its VIPs live on loopback."""
    topo = build(net)
    for pop in topo.pops:
        router = str(pop.lan[254])
        for server in pop.servers:
            defaults = [r for r in topo.routes if r.host == server and r.dst == "default"]
            assert [r.via for r in defaults] == [router]
            assert str(pop.ingress) not in {r.via for r in topo.routes if r.host == server}
            sysctls = dict(topo.host(server).sysctls())
            assert sysctls["net.ipv4.conf.all.arp_ignore"] == "1"
            assert sysctls["net.ipv4.conf.all.arp_announce"] == "2"
            assert sysctls["net.ipv4.conf.all.rp_filter"] == "0"


def test_wires_carry_the_latency_matrix_scaled(net: NetworkConfig) -> None:
    topo = build(net, latency_scale=0.5)
    delays = {w.host: w.delay_ms for w in topo.wires}
    assert delays == {"wire-a-b": 5.0, "wire-a-c": 22.5, "wire-b-c": 6.0}
    for pop in topo.pops:
        for other in topo.pops:
            if other is not pop:
                route = next(
                    r for r in topo.routes if r.host == pop.router and r.dst == str(other.lan)
                )
                assert ipaddress.IPv4Address(route.via) in ipaddress.IPv4Network("10.253.0.0/16")


def test_xdp_hooks_edge_ingress_server_links_and_napi_on_router_ports(net: NetworkConfig) -> None:
    topo = build(net)
    hooks = {(h.host, h.ifname): h.role for h in topo.xdp}
    for pop in topo.pops:
        assert hooks[(pop.edge, "eth0")] is XdpRole.EDGE
        for server in pop.servers:
            assert hooks[(server, "eth0")] is XdpRole.SERVER
        ports = {
            e.ifname for lk in topo.links for e in (lk.a, lk.b) if e.bridge and e.host == pop.router
        }
        assert {hooks[(pop.router, p)] for p in ports} == {XdpRole.PASS}
    lan_links = [lk for lk in topo.links if lk.b.bridge]
    assert {lk.mtu for lk in lan_links} == {LAN_MTU}


def test_one_vip_per_tier(net: NetworkConfig) -> None:
    topo = build(net)
    assert [(v.tier, v.tier_name) for v in topo.vips] == [(t.id, t.name) for t in net.tiers]
    assert topo.vip("standard") == ipaddress.IPv4Address("10.200.1.1")
    with pytest.raises(KeyError):
        topo.netns("nope")
