"""The live lab: real namespaces, real TCP, the forwarder's real XDP programs.

Proves the topology (anycast catchments, direct server return, inter-PoP latency), the HTTP
service and the load generator, and that `up`/`down` are idempotent and recover from a crash.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from lab import dataplane
from lab.app.results import Record, summarize
from lab.namespaces import DataPlane, Lab, lab_namespaces, python
from tests.lab.conftest import make_lab, require_root

pytestmark = [pytest.mark.root, pytest.mark.slow]


def whoami(lab: Lab, client: str, tier: str | None = None) -> dict[str, object]:
    vip = str(lab.topo.vip(tier))
    proc = lab.run(client, python("lab.app.loadgen", "whoami", "--target", vip))
    answer: dict[str, object] = json.loads(proc.stdout)
    assert proc.returncode == 0, answer
    return answer


def loadgen(lab: Lab, client: str, *args: str) -> tuple[dict[str, object], list[Record]]:
    """Run the load generator in `client`; its printed summary and its JSON-lines records."""
    out = lab.state_dir / f"{client}.loadgen.jsonl"
    vip = str(lab.topo.vip())
    cmd = python("lab.app.loadgen", "run", "--target", vip, "--out", str(out), *args)
    proc = lab.run(client, cmd, check=True)
    records = [Record.from_json(line) for line in out.read_text().splitlines()]
    return json.loads(proc.stdout), records


def test_up_is_idempotent_recovers_from_a_crash_and_down_leaves_nothing() -> None:
    require_root()
    lab = make_lab(DataPlane.ROUTING)
    # What a crashed run leaves: a stale namespace with a process still inside.
    stale = lab.topo.prefix + "stale-crash"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"])
    try:
        lab.up()
        assert sleeper.wait(timeout=10) != 0  # stopped by up's cleanup
        assert stale not in lab_namespaces(lab.topo.prefix)
        lab.up()
        assert whoami(lab, "client-a")["pop"] == "a"
        assert len(lab_namespaces(lab.topo.prefix)) == len(lab.topo.hosts)
    finally:
        lab.down()
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not [line for line in listing.stdout.splitlines() if line.startswith("ps-")]
    assert not lab.topo.pin_root().exists()
    lab.down()  # again: nothing to do, no error


def test_each_region_is_answered_by_its_own_pop(xdp_lab: Lab) -> None:
    for pop in xdp_lab.topo.pops:
        answer = whoami(xdp_lab, pop.client)
        assert answer["pop"] == pop.name
        assert answer["server"] in pop.servers
        assert answer["local"] == f"{xdp_lab.topo.vip()}:80"  # the anycast VIP served it


def test_every_tier_vip_is_served(xdp_lab: Lab) -> None:
    for vip in xdp_lab.topo.vips:
        assert whoami(xdp_lab, "client-b", vip.tier_name)["pop"] == "b"


def test_responses_go_straight_from_server_to_client(xdp_lab: Lab) -> None:
    """DSR: a 4 MB download crosses the edge only as requests and ACKs, never as data."""
    from services.forwarder.layout import Verdict

    pop = xdp_lab.topo.pop("a")
    size = 4_000_000
    before = xdp_lab.link_stats(pop.edge, "eth0")
    encapsulated = dataplane.counters(xdp_lab.topo, pop.edge)[Verdict.FWD_INTRA].packets
    url = f"http://{xdp_lab.topo.vip()}/blob?bytes={size}"
    fetch = f"import urllib.request; print(len(urllib.request.urlopen({url!r}).read()))"
    got = xdp_lab.run(pop.client, ["python3", "-c", fetch], check=True)
    after = xdp_lab.link_stats(pop.edge, "eth0")
    assert int(got.stdout) == size
    edge_rx = after["rx_bytes"] - before["rx_bytes"]
    assert edge_rx < size // 20, f"the edge saw {edge_rx} bytes of a {size}-byte download"
    # ...and the client->server direction did cross it, encapsulated by XDP.
    now = dataplane.counters(xdp_lab.topo, pop.edge)[Verdict.FWD_INTRA].packets
    assert now - encapsulated > 100


def test_a_long_lived_connection_survives_five_seconds(xdp_lab: Lab) -> None:
    summary, records = loadgen(xdp_lab, "client-c", "--rate", "0", "--duration", "5",
                               "--long", "3", "--no-reconnect")  # fmt: skip
    assert summary["failed"] == 0, records
    assert [(r.outcome.value, r.pop, r.servers_seen) for r in records] == [("ok", "c", 1)] * 3
    assert all(45 <= r.exchanges <= 51 for r in records), [r.exchanges for r in records]


def test_loadgen_summary_counts_what_happened(xdp_lab: Lab) -> None:
    summary, records = loadgen(xdp_lab, "client-a", "--rate", "50", "--duration", "2",
                               "--long", "2")  # fmt: skip
    assert summary["short"] == summarize(records)["short"]
    short = summary["short"]
    assert isinstance(short, dict)
    assert short["total"] == short["ok"] == 100
    assert set(short["by_pop"]) == {"a"}
    # The edge's table spreads new connections over both PoP-a servers.
    assert set(short["by_server"]) == set(xdp_lab.topo.pop("a").servers)
    assert sum(short["by_server"].values()) == 100
    assert summary["failed"] == 0


@pytest.mark.parametrize(("src", "dst"), [("a", "b"), ("b", "c"), ("a", "c")])
def test_inter_pop_latency_follows_the_matrix(xdp_lab: Lab, src: str, dst: str) -> None:
    """A TCP connect from one edge to another PoP's ingress (refused: a RST) takes one RTT."""
    one_way = xdp_lab.network.latency(src, dst)
    assert one_way is not None
    target = str(xdp_lab.topo.pop(dst).ingress)
    probe = (
        "import socket, time\n"
        "def rtt():\n"
        "    s = socket.socket(); t = time.monotonic()\n"
        f"    try: s.connect(({target!r}, 9))\n"
        "    except ConnectionRefusedError: pass\n"
        "    finally: s.close()\n"
        "    return (time.monotonic() - t) * 1000\n"
        "rtt()\n"  # resolves ARP on the way
        "print(min(rtt() for _ in range(3)))\n"
    )
    got = float(
        xdp_lab.run(xdp_lab.topo.pop(src).edge, ["python3", "-c", probe], check=True).stdout
    )
    expected = 2 * one_way * xdp_lab.topo.latency_scale
    assert expected <= got < expected + 15.0, f"{src}->{dst}: rtt {got:.1f} ms, want ~{expected}"


def test_forwarding_moves_new_connections_and_keeps_established_ones(xdp_lab: Lab) -> None:
    """PoP a hands all new connections of a tier to PoP b (GUE over the a-b wire); the long
    connections that already live in a keep their server with zero errors (second chance).
    """
    topo = xdp_lab.topo
    tier = topo.vips[0].tier
    out = xdp_lab.state_dir / "moving.jsonl"
    cmd = python("lab.app.loadgen", "run", "--target", str(topo.vip()), "--rate", "0",
                 "--long", "3", "--duration", "4", "--no-reconnect", "--out", str(out))  # fmt: skip
    longs = xdp_lab.spawn("client-a", cmd, stdout=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert dataplane.redirect(topo, "a", tier, "b") == 2**topo.table_bits
        moved = [whoami(xdp_lab, "client-a") for _ in range(5)]
        assert {m["pop"] for m in moved} == {"b"}
        stdout, _ = longs.communicate(timeout=30)
    finally:
        dataplane.redirect(topo, "a", tier, None)
    summary = json.loads(stdout)
    records = [Record.from_json(line) for line in out.read_text().splitlines()]
    assert summary["failed"] == 0, records
    assert {(r.pop, r.servers_seen) for r in records} == {("a", 1)}
    assert whoami(xdp_lab, "client-a")["pop"] == "a"


def test_burner_runs_inside_a_server(xdp_lab: Lab) -> None:
    burn = python("lab.app.burner", "--procs", "2", "--seconds", "0.3")
    out = xdp_lab.run("a-s1", burn, check=True).stdout
    assert out.startswith("burner: 2 procs")


def test_loadgen_records_a_pop_that_stops_serving(xdp_lab: Lab) -> None:
    """Servers gone: long connections end (eof/reset), new connections are refused."""
    pop = xdp_lab.topo.pop("c")
    out = xdp_lab.state_dir / "failing.jsonl"
    cmd = python("lab.app.loadgen", "run", "--target", str(xdp_lab.topo.vip()),
                 "--rate", "20", "--long", "2", "--duration", "3", "--no-reconnect",
                 "--timeout", "1", "--out", str(out))  # fmt: skip
    run = xdp_lab.spawn(pop.client, cmd, stdout=subprocess.PIPE)
    try:
        time.sleep(1.0)
        for server in pop.servers:
            xdp_lab.stop_service(server)
        stdout, _ = run.communicate(timeout=30)
    finally:
        for server in pop.servers:
            xdp_lab.start_service(server)
        xdp_lab.wait_ready()
    summary = json.loads(stdout)
    records = [Record.from_json(line) for line in out.read_text().splitlines()]
    assert summary["long"]["failed"] == 2
    assert set(summary["long"]["by_outcome"]) <= {"eof", "reset"}
    short = summary["short"]
    assert short["total"] == 60
    assert short["ok"] >= 10
    assert short["by_outcome"].get("refused", 0) >= 20, short
    assert summary["failed"] == sum(1 for r in records if r.outcome.value != "ok")
