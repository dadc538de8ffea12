"""The live lab: anycast PoPs, clients and an internet as network namespaces joined by veths.

lab.topology says what exists (as data); this module makes it so, one function per step, with
`ip`, `tc`, `ethtool` and `sysctl`, and tears it down again. Every namespace name starts with
the lab prefix (`ps-`); `up` first removes whatever a crashed run left (processes in those
namespaces, the namespaces, the lab's BPF pins), so `up` and `down` are idempotent.

`python -m lab up|status|exec|down` (lab/__main__.py), the tests and the scenario's harness
all drive it through `Lab` (`up`, `down`, `run`, `spawn`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lab.topology import HTTP_PORT, Role, Topology, XdpRole, build
from popshift.network import NetworkConfig, load_network

if TYPE_CHECKING:
    from lab.dataplane import SyncStarter

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DEFAULT_NETWORK = REPO / "deploy" / "config" / "network.yaml"
DEFAULT_STATE = Path(os.environ.get("POPSHIFT_LAB_STATE", "/run/popshift-lab"))
LOCK_DIR = Path("/run/lock")


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its stderr."""


class DataPlane(StrEnum):
    ROUTING = "routing"  # plain routes: edge -> one server; proves topology, service and DSR
    XDP = "xdp"  # the forwarder's programs attached at the topology's XDP hooks


def sh(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def python(module: str, *args: str) -> list[str]:
    """The command line of one of the repo's Python programs, for run() and spawn()."""
    return [sys.executable, "-m", module, *args]


# -- teardown --------------------------------------------------------------------------------


def lab_namespaces(prefix: str) -> list[str]:
    """Every namespace named with the lab prefix, whether this run created it or a crashed one."""
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_processes(namespaces: Sequence[str], grace_s: float = 3.0) -> None:
    """SIGTERM every process living in the lab's namespaces (only those), SIGKILL stragglers."""
    pids = [
        int(pid)
        for ns in namespaces
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split()
    ]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def stop_syncs(pids_file: Path, grace_s: float = 5.0) -> None:
    """SIGTERM the lab's own forwarder syncs (by the pids `start_sync` recorded, if they are
    still syncs), SIGKILL stragglers. They live in the host namespace, not the lab's."""
    pids = []
    for line in pids_file.read_text().splitlines() if pids_file.exists() else []:
        pid = int(line.split()[0])
        with contextlib.suppress(OSError):
            if b"services.forwarder.sync" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            break
    pids_file.unlink(missing_ok=True)


def remove_namespaces(namespaces: Sequence[str]) -> None:
    """Deleting a namespace deletes its veths, and so their peers in the other namespaces."""
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)


def remove_pins(topo: Topology) -> None:
    shutil.rmtree(topo.pin_root(), ignore_errors=True)


# -- build, one function per step ------------------------------------------------------------


def create_namespaces(topo: Topology) -> None:
    for h in topo.hosts:
        sh("ip", "netns", "add", topo.netns(h.name))
        sh("ip", "-n", topo.netns(h.name), "link", "set", "dev", "lo", "up")


def set_sysctls(topo: Topology) -> None:
    """Before any link exists, so that every interface inherits the `default` values."""
    for h in topo.hosts:
        sh("ip", "netns", "exec", topo.netns(h.name), "sysctl", "-q", "-w",
           *(f"{k}={v}" for k, v in h.sysctls()))  # fmt: skip


def create_bridges(topo: Topology) -> None:
    for br in topo.bridges:
        ns = topo.netns(br.host)
        sh("ip", "-n", ns, "link", "add", br.name, "mtu", str(br.mtu), "type", "bridge",
           "stp_state", "0")  # fmt: skip


def create_links(topo: Topology) -> None:
    """veth pairs created straight inside their namespaces: nothing ever lands in the host's."""
    for link in topo.links:
        a, b = link.a, link.b
        mtu = str(link.mtu)
        peer = ("peer", "name", b.ifname, "netns", topo.netns(b.host), "mtu", mtu)
        sh("ip", "-n", topo.netns(a.host), "link", "add", "name", a.ifname, "mtu", mtu,
           "type", "veth", *peer)  # fmt: skip
        for end in (a, b):
            if end.bridge:
                sh("ip", "-n", topo.netns(end.host), "link", "set", "dev", end.ifname, "master",
                   end.bridge)  # fmt: skip


def disable_offloads(topo: Topology) -> None:
    """XDP sees packets whose checksums are not final when veth offloads are on
    (docs/packet-path.md, kernel notes)."""
    for end in topo.ends():
        sh("ip", "netns", "exec", topo.netns(end.host), "ethtool", "-K", end.ifname,
           "tx", "off", "rx", "off", "gso", "off", "tso", "off", "gro", "off")  # fmt: skip


def assign_addresses(topo: Topology) -> None:
    """Link and bridge addresses, and on every server the VIPs on loopback (DSR)."""
    for end in topo.ends():
        if end.addr:
            sh("ip", "-n", topo.netns(end.host), "addr", "add", end.addr, "dev", end.ifname)
    for br in topo.bridges:
        sh("ip", "-n", topo.netns(br.host), "addr", "add", br.addr, "dev", br.name)
    for h in topo.by_role(Role.SERVER):
        for v in topo.vips:
            sh("ip", "-n", topo.netns(h.name), "addr", "add", f"{v.addr}/32", "dev", "lo")


def bring_up(topo: Topology) -> None:
    for br in topo.bridges:
        sh("ip", "-n", topo.netns(br.host), "link", "set", "dev", br.name, "up")
    for end in topo.ends():
        sh("ip", "-n", topo.netns(end.host), "link", "set", "dev", end.ifname, "up")


def add_routes(topo: Topology) -> None:
    """Static routes, and the anycast catchments as one policy table per client region."""
    for r in topo.routes:
        table = ["table", str(r.table)] if r.table else []
        sh("ip", "-n", topo.netns(r.host), "route", "add", r.dst, "via", r.via, *table)
    for rule in topo.rules:
        sh("ip", "-n", topo.netns(rule.host), "rule", "add", "iif", rule.iif,
           "table", str(rule.table), "pref", str(rule.pref))  # fmt: skip


def netem_available(topo: Topology) -> bool:
    """Probe sch_netem on a wire's interface (some kernels are built without it)."""
    if not topo.wires:
        return False
    w = topo.wires[0]
    probe = sh("tc", "-n", topo.netns(w.host), "qdisc", "add", "dev", w.a, "root", "netem",
               "delay", "1ms", check=False)  # fmt: skip
    if probe.returncode != 0:
        return False
    sh("tc", "-n", topo.netns(w.host), "qdisc", "del", "dev", w.a, "root")
    return True


# -- the lab ---------------------------------------------------------------------------------


class Lab:
    """The lab as tests and the CLI drive it. `up` always rebuilds from nothing."""

    def __init__(
        self,
        topology: Topology | None = None,
        network: NetworkConfig | None = None,
        dataplane: DataPlane = DataPlane.ROUTING,
        state_dir: Path = DEFAULT_STATE,
        network_file: Path = DEFAULT_NETWORK,
        start_sync: SyncStarter | None = None,
    ) -> None:
        """`start_sync` starts a node's forwarder sync (XDP mode); unset = the lab's own
        (`start_sync` below: Redis polling only, no Kafka, no lease)."""
        self.network_file = network_file
        self.network = network or load_network(network_file)
        self.topo = topology or build(self.network)
        self.dataplane = dataplane
        self.state_dir = state_dir
        self.delay_mode = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._start_sync = start_sync or self.start_sync

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One `up` or `down` of a lab (prefix) at a time, across processes."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOCK_DIR / f"popshift-lab-{self.topo.prefix.strip('-')}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def up(self) -> None:
        """Remove whatever an earlier (or crashed) run left, then build the lab and wait for it."""
        with self._locked():
            self._teardown()
            try:
                self._build()
            except BaseException:
                self._teardown()
                raise
            self._save_state()

    def _build(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        create_namespaces(self.topo)
        set_sysctls(self.topo)
        create_bridges(self.topo)
        create_links(self.topo)
        disable_offloads(self.topo)
        assign_addresses(self.topo)
        bring_up(self.topo)
        self.add_delays()
        add_routes(self.topo)
        self.start_services()
        self.attach_dataplane()
        self.wait_ready()

    def down(self) -> None:
        """Stop the lab's processes, delete its namespaces and pins. Safe to call any time."""
        with self._locked():
            self._teardown()

    def _teardown(self) -> None:
        namespaces = lab_namespaces(self.topo.prefix)
        stop_processes(namespaces)
        stop_syncs(self._syncs_file())
        for proc in self._procs:  # ours and stopped: collect them now, not at garbage collection
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        self._reap()
        remove_namespaces(namespaces)
        remove_pins(self.topo)
        self._state_file().unlink(missing_ok=True)

    def _reap(self) -> None:
        """Collect the exit status of our children that have ended (no zombies, no warnings)."""
        self._procs = [p for p in self._procs if p.poll() is None]

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- steps that start processes --------------------------------------------------------

    def add_delays(self) -> None:
        """Inter-PoP latency: netem on the wire host's ports, else the userspace relay."""
        if netem_available(self.topo):
            self.delay_mode = "netem"
            for w in self.topo.wires:
                ns = self.topo.netns(w.host)
                sh("ip", "-n", ns, "link", "add", "br", "type", "bridge", "stp_state", "0")
                for port in (w.a, w.b):
                    sh("ip", "-n", ns, "link", "set", "dev", port, "master", "br")
                    sh("tc", "-n", ns, "qdisc", "add", "dev", port, "root", "netem",
                       "delay", f"{w.delay_ms}ms")  # fmt: skip
                sh("ip", "-n", ns, "link", "set", "dev", "br", "up")
            return
        self.delay_mode = "relay"
        for w in self.topo.wires:
            for port in (w.a, w.b):
                sh("ip", "-n", self.topo.netns(w.host), "link", "set", "dev", port, "promisc", "on")
            args = ("--a", w.a, "--b", w.b, "--delay-ms", str(w.delay_ms))
            self.spawn(w.host, python("lab.delay", *args), log_name="delay")

    def start_services(self) -> None:
        for h in self.topo.by_role(Role.SERVER):
            self.start_service(h.name)

    def start_service(self, host: str) -> subprocess.Popen[bytes]:
        """The lab HTTP server on a compute server. It listens on 0.0.0.0 of the server's own
        network namespace, to answer on every anycast VIP (all on that namespace's loopback);
        the namespace holds only the lab's veth wires and no interface of the host, so that
        reaches nothing outside the lab. Elsewhere the server's default is loopback."""
        pop, server = self.topo.server_identity(host)
        args = ("--pop", pop, "--server", server, "--host", "0.0.0.0", "--port", str(HTTP_PORT))
        return self.spawn(host, python("lab.app.server", *args), log_name="http")

    def stop_service(self, host: str) -> None:
        """Stop every process in a server's namespace (its HTTP server): a server failing."""
        stop_processes([self.topo.netns(host)])
        self._reap()

    def attach_dataplane(self) -> None:
        """THE XDP HOOK: `xdp_edge` on every edge's eth0, `xdp_server` on every server's eth0,
        each configured and attached by its forwarder sync from a node file (lab.dataplane).

        Routing mode leaves the edge's plain route (VIPs -> first server) in charge.
        """
        if self.dataplane is DataPlane.XDP:
            from lab import dataplane

            dataplane.attach(self.topo, self._start_sync, self.state_dir / "nodes")

    def start_sync(self, host: str, node_file: Path) -> subprocess.Popen[bytes]:
        """The hand-built lab's forwarder sync of one node, in the host namespace (the node
        file names the netns to attach in), logged to `<state_dir>/<host>.sync.log`.

        Its tables are the lab's own: no table writer writes its Redis key prefix, so it keeps
        the bootstrap table and whatever `redirect` writes. Hence no lease
        (POPSHIFT_SYNC_LEASE_S=0: a hand-written table is never renewed, and a lease would cut
        it back to local 15 s later) and no Kafka (nothing to hear, no stats to send). The
        scenario's harness starts its syncs the product's way instead (lab.supervisor).
        """
        from lab.settings import env
        from services.forwarder.sync_settings import SyncSettings

        settings = env(
            SyncSettings,
            sync_pin_dir=str(self.topo.pin_root()),
            table_bits=self.topo.table_bits,
            network_file=str(self.network_file),
            sync_kafka=False,
            sync_lease_s=0.0,
            table_key_prefix=f"lab-{self.topo.prefix}table",
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("POPSHIFT_")}
        keep = ("POPSHIFT_REDIS_URL", "POPSHIFT_SECRETS_DIR", "POPSHIFT_STATE_DIR")
        base |= {k: os.environ[k] for k in keep if k in os.environ}
        # The lab's own hand-written tables, under its own key prefix: it reads them as the
        # admin (the product's syncs log in as sync-<pop>, lab.supervisor).
        base["POPSHIFT_PRINCIPAL"] = "admin"
        log = open(self.state_dir / f"{host}.sync.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                python("services.forwarder.sync", "--node-file", str(node_file)),
                cwd=REPO,
                env=base | settings,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives `python -m lab up` exiting
            )
        finally:
            log.close()
        with open(self._syncs_file(), "a") as f:
            f.write(f"{proc.pid} {host}\n")
        self._procs.append(proc)
        return proc

    def _syncs_file(self) -> Path:
        return self.state_dir / f"{self.topo.prefix}syncs.pids"

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        """Every server answers on the VIP from inside its namespace, then every client region
        gets an answer through the internet, its PoP's edge and the data plane.
        """
        deadline = time.monotonic() + timeout_s
        self._probe([h.name for h in self.topo.by_role(Role.SERVER)], deadline)
        self._probe([h.name for h in self.topo.by_role(Role.CLIENT)], deadline)

    def _probe(self, hosts: list[str], deadline: float) -> None:
        vip = str(self.topo.vip())
        whoami = python("lab.app.loadgen", "whoami", "--target", vip, "--timeout", "1")
        pending = hosts
        while pending:
            probes = {
                host: subprocess.Popen(
                    ["ip", "netns", "exec", self.topo.netns(host), *whoami],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=REPO,
                )
                for host in pending
            }
            pending = [host for host, proc in probes.items() if proc.wait() != 0]
            if pending and time.monotonic() > deadline:
                raise LabError(f"no answer from the VIP {vip} in {pending}")
            time.sleep(0.1 if pending else 0.0)

    # -- using the lab ---------------------------------------------------------------------

    def run(
        self, host: str, cmd: Sequence[str], check: bool = False, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside `host`'s namespace and wait for it (output captured)."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.topo.netns(host), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )
        if check and proc.returncode != 0:
            raise LabError(f"{host}: {' '.join(cmd)}: {proc.stderr.strip()}")
        return proc

    def spawn(
        self, host: str, cmd: Sequence[str], log_name: str = "", **popen: Any
    ) -> subprocess.Popen[bytes]:
        """Start a command inside `host`'s namespace; `down` stops it.

        With `log_name`, output goes to `<state_dir>/<host>.<log_name>.log`; otherwise as the
        Popen keyword arguments say (e.g. stdout=subprocess.PIPE).
        """
        if log_name:
            log = open(self.state_dir / f"{host}.{log_name}.log", "ab")  # noqa: SIM115
            popen = {"stdout": log, "stderr": subprocess.STDOUT, **popen}
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("start_new_session", True)  # survives `python -m lab up` exiting
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.topo.netns(host), *cmd], cwd=REPO, **popen
            )
        finally:
            if log_name:
                log.close()
        self._procs.append(proc)
        return proc

    def link_stats(self, host: str, ifname: str) -> dict[str, int]:
        """rx/tx packets and bytes of one interface (`ip -s link`)."""
        out = sh("ip", "-n", self.topo.netns(host), "-s", "-j", "link", "show", "dev", ifname)
        stats = json.loads(out.stdout)[0]["stats64"]
        return {
            "rx_packets": stats["rx"]["packets"],
            "rx_bytes": stats["rx"]["bytes"],
            "tx_packets": stats["tx"]["packets"],
            "tx_bytes": stats["tx"]["bytes"],
        }

    def xdp_prog(self, host: str, ifname: str) -> int:
        """The id of the XDP program attached to an interface, 0 if none."""
        out = sh("ip", "-n", self.topo.netns(host), "-j", "link", "show", "dev", ifname)
        info = json.loads(out.stdout)[0]
        return int(info.get("xdp", {}).get("prog", {}).get("id", 0))

    def status(self) -> dict[str, Any]:
        present = set(lab_namespaces(self.topo.prefix))
        hosts = {}
        for h in self.topo.hosts:
            ns = self.topo.netns(h.name)
            entry: dict[str, Any] = {"role": h.role.value, "pop": h.pop, "up": ns in present}
            if ns in present:
                entry["pids"] = len(sh("ip", "netns", "pids", ns, check=False).stdout.split())
                entry["xdp"] = {
                    x.ifname: self.xdp_prog(h.name, x.ifname)
                    for x in self.topo.xdp
                    if x.host == h.name and x.role is not XdpRole.PASS
                }
            hosts[h.name] = entry
        return {
            "prefix": self.topo.prefix,
            "state": self._load_state(),
            "vips": {v.tier_name: str(v.addr) for v in self.topo.vips},
            "catchments": dict(self.topo.catchments),
            "pops": {
                p.name: {
                    "ingress": str(p.ingress),
                    "edge": p.edge,
                    "servers": dict(zip(p.servers, map(str, p.server_addrs), strict=True)),
                }
                for p in self.topo.pops
            },
            "wires_ms": {w.host: w.delay_ms for w in self.topo.wires},
            "hosts": hosts,
        }

    def _state_file(self) -> Path:
        return state_file(self.state_dir, self.topo.prefix)

    def _save_state(self) -> None:
        """How this lab was built, so that `status`, `exec` and `redirect` rebuild the same."""
        state = {
            "dataplane": self.dataplane.value,
            "delay": self.delay_mode,
            "network": str(self.network_file),
            "servers": len(self.topo.pops[0].servers),
            "latency_scale": self.topo.latency_scale,
            "table_bits": self.topo.table_bits,
        }
        self._state_file().write_text(json.dumps(state) + "\n")

    def _load_state(self) -> dict[str, Any]:
        return load_state(self.state_dir, self.topo.prefix)


def state_file(state_dir: Path, prefix: str) -> Path:
    return state_dir / f"{prefix}lab.json"


def load_state(state_dir: Path, prefix: str) -> dict[str, Any]:
    try:
        return dict(json.loads(state_file(state_dir, prefix).read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
