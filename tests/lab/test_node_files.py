"""The node files the lab writes, checked without root: the product's parser and planner read
them as the lab means them (role, address, peers' kinds, VIPs and bootstrap servers)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lab import dataplane
from lab.namespaces import DEFAULT_NETWORK
from lab.topology import XdpRole, build
from popshift.network import load_network
from services.forwarder.layout import PeerKind
from services.forwarder.node_config import read_node


def test_every_node_file_plans_what_the_lab_needs(tmp_path: Path) -> None:
    net = load_network(DEFAULT_NETWORK)
    topo = build(net, servers_per_pop=2, table_bits=8)
    hooks = [h for h in topo.xdp if h.role is not XdpRole.PASS]
    assert len(hooks) == 9
    for hook in hooks:
        pop = topo.pop(topo.host(hook.host).pop)
        node, plan = read_node(dataplane.write_node_file(topo, hook, tmp_path), net)
        assert (node.pop, node.node, node.interface) == (pop.name, hook.host, "eth0")
        assert node.netns == topo.netns(hook.host)
        assert plan.config.fib and plan.config.mtu == topo.mtu["lan"]
        assert plan.config.pop_id == pop.id
        want = {
            p.lan: (PeerKind.LOCAL if p.name == pop.name else PeerKind.REMOTE, p.id)
            for p in topo.pops
        }
        assert plan.peers == want
        if hook.role is XdpRole.EDGE:
            assert node.role == "edge"
            assert plan.config.self4 == pop.ingress
            assert plan.vips == {ipaddress.IPv4Network(v.addr): v.tier for v in topo.vips}
            assert plan.bootstrap == tuple(str(a) for a in pop.server_addrs)
        else:
            assert node.role == "server"
            assert plan.config.self4 == pop.server_addrs[pop.servers.index(hook.host)]
            assert not plan.vips and not plan.bootstrap
