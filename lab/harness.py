"""The harness of a scenario run: the lab, a cgroup and burner per server, the services, the
work model and the observer, and the means to drive and watch them.

`Harness` is a context manager: entering builds everything and waits until every PoP has a
table and a verdict; leaving undoes all of it (processes, namespaces, pins, cgroups, Redis keys,
Kafka topics), also after a failure or Ctrl-C. The story told on it is lab.scenario; the
benchmark bench/time_to_relief.py tells another.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import redis

from lab.app.results import Record
from lab.namespaces import LOCK_DIR, DataPlane, Lab, lab_namespaces, python, sh
from lab.observer import Observer, node_counters, open_forwarder
from lab.record import Result, Traffic, policy_in_force
from lab.settings import NETWORK, PREFIX, REPO, TABLE_BITS, TIER, timings
from lab.supervisor import Services
from lab.topology import Role, build
from lab.work import ServerCgroup, WorkModel, cgroup_name, remove_cgroups
from popshift import redis_client
from popshift.network import load_network
from popshift.settings import Settings
from services.forwarder.layout import Verdict
from services.forwarder.loader import Forwarder
from services.forwarder.loader import Role as FwdRole


@dataclass(frozen=True)
class LoadPlan:
    """Who sends what, and what a packet costs a server while the load is on."""

    rates: Mapping[str, float] = field(default_factory=lambda: {"a": 50.0, "b": 18.0, "c": 10.0})
    longs: Mapping[str, int] = field(default_factory=lambda: {"a": 6, "b": 3, "c": 2})
    late_longs: int = 12  # opened in region a while a forwards: some live in b
    # Small absolute CPU (a tenth of a core or so per server) so that the overload is the
    # lab's own and not at the mercy of whatever else runs on the machine's two cores.
    # Each server's CFS quota, and what its agent reports. Sized so that relief is possible
    # within the bulk tier's bound (SCENARIOS.md, "Capacity"): a's excess fits in b once b
    # passes part of its own traffic on to c, which has room to spare.
    capacity_cores: Mapping[str, float] = field(
        default_factory=lambda: {"a": 0.1, "b": 0.18, "c": 0.2}
    )
    cost_ms: float = 0.64  # CPU per locally processed packet while the load is on
    infeasible_cost_ms: float = 2.5  # ... in the variant beyond capacity (scenario.infeasible)
    idle_cost_ms: float = 0.04  # ... and while it is off
    pin_rate: float = 100.0  # extra short requests/s from region a while the share is pinned


# A server's verdicts for its PoP's own traffic: processed here, or sent to another PoP.
OWN_HERE = (Verdict.LOCAL, Verdict.LOCAL_HOPS_EXHAUSTED, Verdict.LOCAL_SELF_SECONDARY)
OWN_AWAY = (Verdict.FWD_INTER, Verdict.SECOND_CHANCE_INTER)


class ScenarioError(RuntimeError):
    """The scenario could not go on (a service died, a phase timed out)."""


class Harness:
    """The lab, cgroups, burners, services, work model and observer of one run; `close` undoes
    all of it (processes, namespaces, pins, cgroups, Redis keys, Kafka topics), also after a
    failure or Ctrl-C."""

    def __init__(self, out_dir: Path, plan: LoadPlan | None = None, log: Callable[[str], None]
                 = print, extra_env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        """`extra_env`: POPSHIFT_* settings on top of the run's (lab.settings.env builds them)."""
        self.out_dir = out_dir
        self.plan = plan or LoadPlan()
        self.log = log
        self.run_id = f"scn-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        net = load_network(NETWORK)
        self.topo = build(net, table_bits=TABLE_BITS, prefix=PREFIX)
        self.services = Services(self.topo, self.run_id, out_dir / "logs", extra_env)
        # the lab attaches every node through its forwarder sync, started as a service
        self.lab = Lab(self.topo, net, DataPlane.XDP, state_dir=out_dir / "lab",
                       network_file=NETWORK, start_sync=self.services.start_sync)  # fmt: skip
        self.cgroups = {
            h.name: ServerCgroup(cgroup_name(PREFIX, h.name))
            for h in self.topo.by_role(Role.SERVER)
        }
        self.result = Result(epoch=time.time(), pops=[p.name for p in self.topo.pops],
                             table_bits=TABLE_BITS)  # fmt: skip
        self.result.settings = timings() | {"run_id": self.run_id}
        self.result.addresses = {"vip": str(self.topo.vip())} | {
            e.host: e.addr.split("/")[0]
            for e in self.topo.ends()
            if e.ifname == "eth0" and e.host in {p.client for p in self.topo.pops}
        }
        self.observer: Observer | None = None
        self.work: WorkModel | None = None
        self._server_fwd: dict[str, Forwarder] = {}
        self._native_last: tuple[float, dict[str, int]] = (0.0, {})
        self.traffic: dict[str, tuple[str, str, Path, subprocess.Popen[bytes]]] = {}
        self.progress_s = 5.0
        self._next_progress = 0.0
        self._lock: TextIO | None = None

    # -- setup -----------------------------------------------------------------------------

    def _lock_prefix(self) -> None:
        """One run per lab prefix on a machine: a second run (another terminal, a test) would
        otherwise tear down this one's namespaces and cgroups as "left by a crash"; it waits."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK_DIR / f"popshift-scenario-{PREFIX.strip('-')}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"another scenario run uses the {PREFIX}* lab: waiting for it to end")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    def open(self) -> Harness:
        self._lock_prefix()
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "lab").mkdir(parents=True, exist_ok=True)
        self.log(f"run {self.run_id}: building the lab ({PREFIX}*, XDP, 2^{TABLE_BITS} buckets, "
                 "a forwarder sync with its node file per edge and server)")  # fmt: skip
        remove_cgroups(PREFIX)
        self.lab.up()
        self._client_ports()
        self._burners()
        self.log("starting the services: ingest, analytics, policy engine, 3 table writers, "
                 "6 agents")  # fmt: skip
        self.services.start(self.cgroups, self.plan.capacity_cores)
        self.observer = Observer(self.result, self.topo, self.run_id).start()
        self.work = WorkModel(
            {h: self.out_dir / "lab" / f"{h}.duty" for h in self.cgroups}, self._packets
        ).start()
        self.work.set_cost(dict.fromkeys(self.cgroups, self.plan.idle_cost_ms))
        self._wait_ready()
        return self

    def _client_ports(self) -> None:
        """The whole ephemeral port range in the client namespaces: one client address makes
        thousands of connections, and a source port reused while the server that had it still
        holds the old connection in TIME_WAIT is (rightly) processed there, not where the
        bucket points, which would bias the measured shares."""
        for h in self.topo.by_role(Role.CLIENT):
            sh("ip", "netns", "exec", self.topo.netns(h.name), "sysctl", "-q", "-w",
               "net.ipv4.ip_local_port_range=1024 65535")  # fmt: skip

    def _burners(self) -> None:
        """A cgroup per server holding its HTTP server and its burner."""
        for host, cg in self.cgroups.items():
            cg.create(self.plan.capacity_cores[self.topo.host(host).pop])
            for pid in sh("ip", "netns", "pids", self.topo.netns(host)).stdout.split():
                cg.add(int(pid))
            duty = self.out_dir / "lab" / f"{host}.duty"
            duty.write_text("0\n")
            cmd = python("lab.work", "spin", "--duty-file", str(duty))
            cg.add(self.lab.spawn(host, cmd, log_name="burner").pid)
            self._server_fwd[host] = open_forwarder(self.topo, host, FwdRole.SERVER)

    def _count(self, host: str, verdicts: tuple[Verdict, ...]) -> int:
        counts = self._server_fwd[host].read_counters()
        return sum(c[v].packets for c in counts.values() for v in verdicts)

    def _packets(self, host: str) -> int:
        """Packets the server processed itself (its share of the work)."""
        return self._count(host, (*OWN_HERE, Verdict.RECEIVED_PEER))

    def native_demand(self) -> dict[str, float]:
        """The true native demand of each PoP in cores since the last call: its region's
        packets (processed here or sent to another PoP) times the cost of a packet now. What
        the engine's estimate (its log's "native cores") should find; uncapped."""
        now = time.monotonic()
        own = {h: self._count(h, (*OWN_HERE, *OWN_AWAY)) for h in self._server_fwd}
        then, before = self._native_last
        self._native_last = (now, own)
        if not before or now <= then or self.work is None:
            return {}
        out: dict[str, float] = {}
        for host, n in own.items():
            pop = self.topo.host(host).pop
            cores = (n - before.get(host, n)) / (now - then) * self.work.cost_ms[host] / 1000.0
            out[pop] = out.get(pop, 0.0) + cores
        return out

    def _wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every PoP has a table in Redis (its writer heard its servers) and a verdict."""
        client: redis.Redis[bytes] = redis_client.connect(Settings().redis(), 5.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self.check_alive()
                keys = [f"{self.run_id}:table:{p.name}:{TIER}:current" for p in self.topo.pops]
                tables = all(client.mget(keys))
                assert self.observer is not None
                s = self.observer.latest() if self.result.samples else None
                if tables and s is not None and set(s.util) == set(self.result.pops):
                    break
                if time.monotonic() > deadline:
                    raise ScenarioError(f"services not ready in {timeout_s}s (tables: {tables})")
                time.sleep(0.5)
        finally:
            client.close()
        self.log(f"services ready after {time.time() - self.result.epoch:.0f}s")

    def check_alive(self) -> None:
        dead = self.services.dead()
        if dead:
            raise ScenarioError(f"service(s) exited: {dead}; logs in {self.out_dir / 'logs'}")
        if self.observer is not None and self.observer.error is not None:
            raise ScenarioError(f"observer failed: {self.observer.error!r}")

    # -- driving it ------------------------------------------------------------------------

    def t(self) -> float:
        return time.time() - self.result.epoch

    def mark(self, name: str) -> float:
        at = round(self.t(), 3)
        self.result.marks[name] = at
        return at

    def start_traffic(self, name: str, region: str, rate: float, longs: int, tag: str) -> None:
        out = self.out_dir / "lab" / f"traffic-{name}.jsonl"
        out.unlink(missing_ok=True)
        cmd = python("lab.traffic", "--target", str(self.topo.vip()), "--rate", str(rate),
                     "--long", str(longs), "--epoch", str(self.result.epoch),
                     "--out", str(out))  # fmt: skip
        proc = self.lab.spawn(self.topo.pop(region).client, cmd, log_name=f"traffic-{name}")
        self.traffic[name] = (region, tag, out, proc)

    def stop_traffic(self, name: str, timeout_s: float = 15.0) -> None:
        region, tag, out, proc = self.traffic[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
        for line in out.read_text().splitlines() if out.exists() else []:
            self.result.traffic.append(Traffic(region, tag, Record.from_json(line)))
        del self.traffic[name]

    def set_load(self, on: bool, cost_ms: float | None = None) -> None:
        """Load on (at `cost_ms`, default the plan's) or off, on every server."""
        assert self.work is not None
        cost = (cost_ms or self.plan.cost_ms) if on else self.plan.idle_cost_ms
        self.work.set_cost(dict.fromkeys(self.cgroups, cost))

    def progress(self) -> None:
        """One line of state every few seconds while the scenario waits."""
        now = time.monotonic()
        if now < self._next_progress or self.observer is None or not self.result.samples:
            return
        self._next_progress = now + self.progress_s
        s = self.observer.latest()
        load = " ".join(
            f"{p}={s.util.get(p, 0):.0%}{'!' if s.state.get(p) == 'shed' else ''}"
            for p in self.result.pops
        )
        duty = ""
        if self.work is not None:
            duty = " ".join(f"{h}:{self.work.rate[h]:.0f}pps" for h in sorted(self.cgroups))
        shares = {src: {d: round(x, 3) for d, x in v.items()} for src, v in s.shares.items() if v}
        native = " ".join(f"{p}={c:.3f}" for p, c in sorted(self.native_demand().items()))
        self.log(f"  t={s.t:5.1f}s load {load} shares {shares or '-'} away {s.away} [{duty}]"
                 f" native cores (true) {native or '-'}")  # fmt: skip

    def wait(self, what: str, check: Callable[[], bool], timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while not check():
            self.check_alive()
            self.progress()
            if time.monotonic() > deadline:
                raise ScenarioError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(0.1)
        return self.t()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_alive()
            self.progress()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def forwarding(self, source: str) -> dict[str, float]:
        return policy_in_force(self.result, source, float("inf"))

    def maps_away(self, pop: str) -> int:
        assert self.observer is not None
        return sum(self.observer.latest().away.get(pop, {}).values())

    def maps_draining(self, pop: str) -> int:
        assert self.observer is not None
        return self.observer.latest().draining.get(pop, 0)

    def counters(self, mark: str) -> None:
        self.result.counters[mark] = node_counters(self.topo)

    def policy_cli(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "popshift.cli", "policy", *args],
            cwd=REPO, env=self.services.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ScenarioError(f"popshift policy {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Undo everything, each step on its own so one failure does not leave the rest."""

        def stop_traffic() -> None:
            for name in list(self.traffic):
                self.stop_traffic(name, 5.0)

        def close_maps() -> None:
            for fwd in self._server_fwd.values():
                fwd.close()
            self._server_fwd.clear()

        steps: list[tuple[str, Callable[[], None]]] = [
            ("traffic", stop_traffic),
            ("work model", lambda: self.work.stop() if self.work else None),
            ("observer", lambda: self.observer.stop() if self.observer else None),
            ("services", self.services.stop),
            ("server maps", close_maps),
            ("lab", self.lab.down),
            ("cgroups", lambda: remove_cgroups(PREFIX)),
            ("redis", self._drop_redis),
            ("kafka", self._drop_topics),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the rest must still be cleaned up
                self.log(f"cleanup of {name} failed: {exc!r}")
        left = lab_namespaces(PREFIX)
        if left:
            self.log(f"namespaces left behind: {left}")
        if self._lock is not None:
            self._lock.close()  # releases the prefix for the next run
            self._lock = None

    def _drop_redis(self) -> None:
        client: redis.Redis[bytes] = redis_client.connect(Settings().redis(), 5.0)
        try:
            for key in client.scan_iter(f"{self.run_id}:*"):
                client.delete(key)
        finally:
            client.close()

    def _drop_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(Settings().kafka().config())
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.run_id)]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=10).values():
                with contextlib.suppress(Exception):
                    fut.result(15)

    def __enter__(self) -> Harness:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def cleanup(out_dir: Path) -> None:
    """After a hard kill of a run: its services (by recorded pid, if still theirs), the lab's
    processes, namespaces and pins, and the cgroups."""
    pids = out_dir / "logs" / "pids"
    for line in pids.read_text().splitlines() if pids.exists() else []:
        pid = int(line.split()[0])
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"services." in cmdline:
                os.kill(pid, signal.SIGKILL)
    net = load_network(NETWORK)
    Lab(build(net, table_bits=TABLE_BITS, prefix=PREFIX), net, DataPlane.XDP,
        state_dir=out_dir / "lab").down()  # fmt: skip
    remove_cgroups(PREFIX)
