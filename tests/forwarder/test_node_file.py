"""The node file: validation that names the bad field, the plan it resolves to, and (root, in a
network namespace) the maps it writes, the attachment (native, else generic), the blocklist file
re-read on reconcile, and `popshift forwarder-sync --node-file` as a process."""

from __future__ import annotations

import ipaddress as ia
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from popshift.network import load_network
from schemas.bucket import Bucket
from services.forwarder import packets as P
from services.forwarder.layout import PeerKind, Verdict, XdpAction
from services.forwarder.loader import DEFAULT_PIN_ROOT, Forwarder, Role
from services.forwarder.node_config import (
    NodeFileError,
    apply_node,
    attach_node,
    parse_blocklist,
    parse_node,
    plan_node,
    read_node,
)
from services.forwarder.sync import NodeKeeper
from services.forwarder.types import TableState
from tests.forwarder.conftest import TEST_DEFINES, require_root
from tests.forwarder.harness import run_both

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy/config/network.yaml")
EXAMPLE = REPO / "deploy/config/node-example.yaml"


def example(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return {**raw, **changes}


def test_the_example_resolves_against_the_network_file() -> None:
    node, plan = read_node(EXAMPLE, NETWORK)
    assert (node.role, node.pop, node.node, node.xdp_mode) == ("edge", "a", "a-edge1", "auto")
    assert plan.config.pop_id == 1 and plan.config.fib and plan.config.mtu == 1600
    assert plan.peers[ia.ip_network("10.100.1.0/24")] == (PeerKind.LOCAL, 1)
    assert plan.peers[ia.ip_network("10.100.3.0/24")] == (PeerKind.REMOTE, 3)
    assert plan.vips == {ia.ip_network("10.200.0.1/32"): 0, ia.ip_network("10.200.1.0/24"): 1}
    assert plan.bootstrap == ("10.100.1.11", "10.100.1.12") and plan.blocklist == frozenset()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"role": "router"}, "role: Input should be 'edge' or 'server'"),
        ({"vips": [{"prefix": "10.200.0.1/32", "tier": 9}]}, "vips.0.tier"),
        ({"vips": [{"prefix": "10.200.0.300/32", "tier": 0}]}, "vips.0.prefix"),
        ({"next_hop": "router"}, "next_hop"),
        ({"mtu": 100}, "mtu"),
        ({"addresses": {}}, "addresses: Value error, give ipv4, ipv6 or both"),
        ({"interfac": "eth1"}, "interfac: Extra inputs are not permitted"),
        ({"tier_hash": {7: "addresses"}}, "tier_hash"),
        ({"role": "server"}, "only an edge forwards by VIP"),
        ({"pop": "z"}, "pop: 'z' is not a PoP"),
        ({"peers": [{"prefix": "10.9.0.0/16", "pop": "q"}]}, "peers.0.pop: 'q' is not a PoP"),
        ({"vips": [{"prefix": "10.200.0.1/32", "tier": 3}]}, "vips.0.tier: tier 3 is not in"),
    ],
)
def test_a_bad_field_is_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(NodeFileError, match=named.replace("(", r"\(")):
        plan_node(parse_node(yaml.safe_dump(example(**changes)), "node.yaml"), NETWORK, frozenset())


def test_blocklist_lines_comments_and_the_bad_line_named() -> None:
    text = "# bad actors\n203.0.113.0/24\n\n2001:db8:bad::1  # one host\n198.51.100.7/24\n"
    assert parse_blocklist(text) == {
        ia.ip_network("203.0.113.0/24"),
        ia.ip_network("2001:db8:bad::1/128"),
        ia.ip_network("198.51.100.0/24"),
    }
    with pytest.raises(NodeFileError, match="line 2"):
        parse_blocklist("10.0.0.0/8\nnot-a-prefix\n", "bl.txt")


# -- on a real program, in a network namespace ------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    require_root()
    name = f"psn{uuid.uuid4().hex[:8]}"
    run = ["ip", "-n", name, "link"]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run([*run, "add", "d0", "type", "veth", "peer", "name", "d1"], check=True)
    for dev in ("d0", "d1", "lo"):
        subprocess.run([*run, "set", dev, "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def write_node(tmp: Path, netns: str, **changes: Any) -> Path:
    """The test packets' world as a node file: EDGE4 in PoP a, VIPs of tiers 0 and 1."""
    raw = example(
        interface="d0",
        netns=netns,
        addresses={"ipv4": P.EDGE4, "ipv6": P.EDGE6},
        next_hop=P.ROUTER_MAC.hex(":"),
        mtu=1500,
        vips=[{"prefix": "192.0.2.0/24", "tier": 0}, {"prefix": "2001:db8::/64", "tier": 1}],
        peers=[{"prefix": "10.0.0.0/16", "pop": "a"}, {"prefix": "10.7.0.0/16", "pop": "c"}],
        blocklist_file=str(tmp / "blocklist.txt"),
        bootstrap_servers=[P.SERVER4, P.SERVER2_4],
    )
    raw.update(changes)
    (tmp / "blocklist.txt").write_text("# none yet\n")
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def model_state(fwd: Forwarder, path: Path) -> TableState:
    _, plan = read_node(path, NETWORK)
    servers = plan.bootstrap
    return TableState(
        bucket_bits=fwd.buckets.bit_length() - 1,
        vips=plan.vips,
        peers=plan.peers,
        blocklist=set(plan.blocklist),
        table={
            (t, i): Bucket(primary=servers[i % len(servers)])
            for t in range(fwd.tiers)
            for i in range(fwd.buckets)
        },
    )


@pytest.fixture
def fresh_edge() -> Iterator[Forwarder]:
    require_root()
    fwd = Forwarder.open(Role.EDGE, f"t_node_{uuid.uuid4().hex[:8]}", defines=TEST_DEFINES)
    try:
        yield fwd
    finally:
        fwd.unpin()
        fwd.close()


def test_a_node_file_configures_attaches_and_rereads_its_blocklist(
    tmp_path: Path, netns: str, fresh_edge: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_node(tmp_path, netns)
    keeper = NodeKeeper(path, NETWORK, fresh_edge)
    keeper.start()
    assert fresh_edge.attached_here("d0", netns)
    _, plan = read_node(path, NETWORK)
    syn = bytes(P.client())
    out = run_both(fresh_edge, plan.config, model_state(fresh_edge, path), syn)
    assert out.verdict is Verdict.FWD_INTRA  # the bootstrap table: a local server

    (tmp_path / "blocklist.txt").write_text(f"{P.CLIENT4}/24\n")
    keeper.reconcile()
    out = run_both(fresh_edge, plan.config, model_state(fresh_edge, path), syn)
    assert out.verdict is Verdict.DROP_BLOCKLIST

    path.write_text(path.read_text().replace("mtu: 1500", "mtu: 12"))
    with caplog.at_level(logging.ERROR):
        keeper.reconcile()  # refused by name; the last good file stays
    assert "mtu" in caplog.text and "NOT applied" in caplog.text
    assert fresh_edge.test_run(syn)[0] == XdpAction.DROP

    tables = [fresh_edge.read_table(t).tobytes() for t in range(fresh_edge.tiers)]
    fresh_edge.apply_table_diff(0, {0: Bucket(primary=P.SERVER6)})
    assert apply_node(fresh_edge, keeper.plan) == []  # a table in force is never bootstrapped
    assert fresh_edge.read_table(1).tobytes() == tables[1]


def test_auto_falls_back_to_generic_where_native_xdp_is_refused(
    tmp_path: Path, netns: str, fresh_edge: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    """Loopback has no native XDP: auto attaches in generic mode and says so."""
    node, _ = read_node(write_node(tmp_path, netns, interface="lo"), NETWORK)
    with caplog.at_level(logging.WARNING):
        assert attach_node(fresh_edge, node) == "generic"
    assert "native XDP refused on lo" in caplog.text
    assert fresh_edge.attached_here("lo", netns)
    assert attach_node(fresh_edge, node) == "already attached"
    native = node.model_copy(update={"xdp_mode": "native"})
    Forwarder.detach("lo", netns)
    with pytest.raises(OSError):
        attach_node(fresh_edge, native)


# -- the command ------------------------------------------------------------------------------


def sync_command(path: Path, pin_root: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.forwarder.sync",
        "--node-file",
        str(path),
        "--pin-dir",
        str(pin_root),
    ]


def sync_env() -> dict[str, str]:
    return dict(
        os.environ,
        POPSHIFT_SYNC_KAFKA="false",
        POPSHIFT_TABLE_BITS=str(TEST_DEFINES["BUCKET_BITS"]),
        POPSHIFT_TABLE_KEY_PREFIX=f"t-{uuid.uuid4().hex[:8]}:table",
        POPSHIFT_SYNC_REDIS_TIMEOUT_S="0.2",
    )


def test_the_sync_refuses_a_bad_node_file_by_name(tmp_path: Path) -> None:
    require_root()
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(example(vips=[{"prefix": "10.200.0.1/32", "tier": 9}])))
    out = subprocess.run(
        sync_command(path, tmp_path), cwd=REPO, env=sync_env(), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "node file refused" in out.stderr and "vips.0.tier" in out.stderr


def test_the_sync_with_a_node_file_loads_configures_and_attaches(
    tmp_path: Path, netns: str
) -> None:
    path = write_node(tmp_path, netns)
    root = DEFAULT_PIN_ROOT / f"t_{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        sync_command(path, root), cwd=REPO, env=sync_env(), stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30.0
        while not (root / "a-edge1" / "prog").exists() or not _attached(root, netns):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the sync did not attach"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "XDP on d0 in netns" in err and "bootstrap table in tiers [0, 1, 2, 3]" in err
    fwd = Forwarder.open(Role.EDGE, "a-edge1", pin_root=root, defines=TEST_DEFINES)
    try:
        assert fwd.adopted and fwd.attached_here("d0", netns)  # outlives the process
        out = run_both(
            fwd, read_node(path, NETWORK)[1].config, model_state(fwd, path), bytes(P.client())
        )
        assert out.verdict is Verdict.FWD_INTRA
    finally:
        Forwarder.detach("d0", netns)
        fwd.unpin()
        fwd.close()
        root.rmdir()


def _attached(root: Path, netns: str) -> bool:
    try:
        fwd = Forwarder.open(Role.EDGE, "a-edge1", pin_root=root, defines=TEST_DEFINES)
    except Exception:  # still being pinned
        return False
    try:
        return fwd.attached_here("d0", netns)
    finally:
        fwd.close()
