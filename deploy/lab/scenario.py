"""The overload scenario: every popshift service as a real process around the namespace lab.

    sudo .venv/bin/python deploy/lab/scenario.py overload --out /tmp/popshift-demo [--no-pin]

What runs (all against the local Kafka and Redis of deploy/local, under a topic prefix and
Redis key prefix of this run only, so runs never read each other's data):
- the lab (lab.py, XDP data plane, table bits 8) with a cgroup per compute server holding its
  HTTP server and a burner whose work follows the server's traffic (lab_work.py);
- an agent per server (`--cgroup`: its own server's CPU), the ingest, the analytics job (faust),
  the policy engine, a table writer per PoP, a forwarder sync per edge and server node;
- traffic in every region (lab_traffic.py): short requests + long-lived echo connections.

The story: traffic runs; the cost of a request rises everywhere (load starts), which overloads
PoP a (its region sends the most) and brings b close to its target; analytics flags a; the
engine moves a share of a's new connections to b, and because c is too far from a for the bulk
tier (45 ms > 30 ms) but b is full, b passes part of its own traffic to c (cascade); long
connections are opened in region a while a forwards (some live in b); the cost drops (load
stops); the policies are cancelled and the buckets drain; optionally a pinned share checks the
data plane's precision. Everything is recorded in a `scenario_report.Result`.

Short lab timings (documented in `LAB_TIMINGS` and passed as POPSHIFT_* settings): heartbeats
1 s, analytics window 3 s (deploy/lab/scenario_analytics.yaml), engine tick 0.5 s, hold-off 3 s,
max step 0.5, dead-band 0.08, drain period 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # deploy/lab is a directory of scripts, not a package

import lab_work  # noqa: E402
import redis  # noqa: E402
from lab import REPO, DataPlane, Lab, lab_namespaces, sh  # noqa: E402
from lab_topology import Role, Topology, build  # noqa: E402
from scenario_report import (  # noqa: E402
    Check,
    PolicyRecord,
    Result,
    Sample,
    StatusRecord,
    TableRecord,
    Traffic,
    Window,
    check_after_cancel,
    check_dsr,
    check_long_connections,
    check_one_hop,
    check_placement,
    check_share,
    format_checks,
    format_timeline,
    min_samples,
    plot,
    policy_in_force,
    table_windows,
    totals,
)

from popshift import topics  # noqa: E402
from popshift.bus import Received, TypedConsumer, TypedProducer, create_topics  # noqa: E402
from popshift.network import load_network  # noqa: E402
from popshift.settings import Settings  # noqa: E402
from schemas.messages import PolicyEvent, PopStatus  # noqa: E402
from services.forwarder.layout import BUCKET_BITS, Flag, Verdict  # noqa: E402
from services.forwarder.loader import Forwarder  # noqa: E402
from services.forwarder.loader import Role as FwdRole  # noqa: E402
from services.forwarder.sync import LoaderMaps  # noqa: E402
from services.labapp.results import Record  # noqa: E402

NETWORK = REPO / "deploy" / "config" / "network.yaml"
ANALYTICS = HERE / "scenario_analytics.yaml"
PREFIX = "po-"  # not the interactive lab's ps-: a scenario never tears down someone's lab
TABLE_BITS = 8
TIER = 0  # the loadgen's VIP is the first (bulk) tier: 30 ms bound, so a->c (45 ms) is out

LAB_TIMINGS: dict[str, str] = {
    # agents and ingest: one heartbeat a second, pop-load every second
    "POPSHIFT_HEARTBEAT_INTERVAL_S": "1",
    "POPSHIFT_PUBLISH_INTERVAL_S": "1",
    "POPSHIFT_MISSED_HEARTBEATS": "3",
    # policy engine: re-solve twice a second, big steps (few rounds per change), and a hold-off
    # of 10 s: on a loaded two-core machine the loads are noisy and a 4 s hold-off let a's
    # share change every few seconds; the share checks need stretches where it holds still
    "POPSHIFT_POLICY_TICK_S": "0.5",
    "POPSHIFT_POLICY_HOLDOFF_S": "10",
    "POPSHIFT_POLICY_MAX_STEP": "0.5",
    # a wide dead-band: the lab's loads are noisy (two shared cores), and a share that holds
    # still is what the precision check needs
    "POPSHIFT_POLICY_DEADBAND": "0.08",
    "POPSHIFT_POLICY_EFFECT_LAG_S": "3",
    "POPSHIFT_POLICY_STATUS_MAX_AGE_S": "10",
    # Native demand from the measured load and the policies in effect, not from the forwarders'
    # counters: a receiving server counts traffic received through its edge as local (and the
    # edge counts it as received), so the counter estimate makes b look like a shedder as soon
    # as it receives, and a's policy flaps (reported; see the scenario's README section).
    "POPSHIFT_POLICY_STATS_MAX_AGE_S": "0.001",
    "POPSHIFT_POLICY_TIER_MIX": '{"0": 1.0}',
    # table writers: drained buckets keep their secondary for 30 s, longer than the scenario's
    # late long connections live (a drain shorter than a connection's life breaks it: by design)
    "POPSHIFT_TABLE_DRAIN_PERIOD_S": "30",
    "POPSHIFT_TABLE_TICK_S": "0.5",
    "POPSHIFT_TABLE_RETAIN_S": "30",
    # forwarder syncs: notices first, Redis poll as the fallback, counters every second
    "POPSHIFT_SYNC_POLL_S": "0.5",
    "POPSHIFT_SYNC_STATS_INTERVAL_S": "1",
}


@dataclass(frozen=True)
class LoadPlan:
    """Who sends what, and what a packet costs a server while the load is on."""

    rates: Mapping[str, float] = field(default_factory=lambda: {"a": 50.0, "b": 18.0, "c": 10.0})
    longs: Mapping[str, int] = field(default_factory=lambda: {"a": 6, "b": 3, "c": 2})
    late_longs: int = 12  # opened in region a while a forwards: some live in b
    # Small absolute CPU (a tenth of a core per server) so that the overload is the lab's own
    # and not at the mercy of whatever else runs on the machine's two cores.
    # each server's CFS quota, and what its agent reports; c (far away) has room to spare
    capacity_cores: Mapping[str, float] = field(
        default_factory=lambda: {"a": 0.1, "b": 0.1, "c": 0.2}
    )
    cost_ms: float = 0.64  # CPU per locally processed packet while the load is on
    idle_cost_ms: float = 0.04  # ... and while it is off
    pin_rate: float = 100.0  # extra short requests/s from region a while the share is pinned


def _now() -> float:
    return time.time()


class Services:
    """The popshift services of one run as processes in the host namespace, each with a log."""

    def __init__(self, topo: Topology, run_id: str, log_dir: Path, env: Mapping[str, str]):
        self.topo = topo
        self.run_id = run_id
        self.log_dir = log_dir
        self.extra_env = dict(env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, **more: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("POPSHIFT_")}
        keep = ("POPSHIFT_KAFKA_BOOTSTRAP", "POPSHIFT_REDIS_URL")
        base |= {k: os.environ[k] for k in keep if k in os.environ}
        r = self.run_id
        base |= {
            "PYTHONUNBUFFERED": "1",
            "POPSHIFT_TOPIC_PREFIX": r,
            "POPSHIFT_TOPIC_PARTITIONS": "1",
            "POPSHIFT_TABLE_BITS": str(self.topo.table_bits),
            "POPSHIFT_NETWORK_FILE": str(NETWORK),
            "POPSHIFT_TABLE_KEY_PREFIX": f"{r}:table",
            "POPSHIFT_POLICY_OVERRIDES_KEY": f"{r}:overrides",
            "POPSHIFT_INGEST_GROUP": f"{r}-ingest",
            "POPSHIFT_ANALYTICS_APP_ID": f"{r}-analytics",
            "POPSHIFT_ANALYTICS_CONFIG": str(ANALYTICS),
            "POPSHIFT_ANALYTICS_DATADIR": str(self.log_dir / "analytics-data"),
            "POPSHIFT_POLICY_GROUP": f"{r}-policy",
            "POPSHIFT_TABLE_GROUP_PREFIX": f"{r}-table",
            "POPSHIFT_SYNC_GROUP_PREFIX": f"{r}-sync",
            "POPSHIFT_SYNC_PIN_DIR": str(self.topo.pin_root()),
            **LAB_TIMINGS,
            **self.extra_env,
        }
        return base | more

    def spawn(self, name: str, args: list[str], **env: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=self.env(POPSHIFT_SERVICE_NAME=name, **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with open(self.log_dir / "pids", "a") as pids:  # for `cleanup` after a hard kill
                pids.write(f"{self.procs[name].pid} {name}\n")
        finally:
            log.close()

    def start(
        self, cgroups: Mapping[str, lab_work.ServerCgroup], capacity: Mapping[str, float]
    ) -> None:
        settings = Settings(topic_prefix=self.run_id)
        create_topics(settings.kafka_bootstrap, [settings.topic(t) for t in topics.ALL_TOPICS], 1)
        self.spawn("ingest", ["-m", "services.feedback_ingest.ingest"])
        self.spawn("analytics", ["-m", "services.analytics.app"])
        self.spawn("policy-engine", ["-m", "services.policy_engine.service"])
        for pop in self.topo.pops:
            self.spawn(
                f"table-writer-{pop.name}", ["-m", "services.table_writer.service", pop.name]
            )
            nodes = [(pop.edge, "edge"), *((s, "server") for s in pop.servers)]
            for node, role in nodes:
                args = ["--pop", pop.name, "--node", node, "--pin-dir", str(self.topo.pin_root())]
                sync = ["-m", "services.forwarder.sync", *args]
                self.spawn(f"sync-{node}", sync, POPSHIFT_SYNC_ROLE=role)
            for host, addr in zip(pop.servers, pop.server_addrs, strict=True):
                agent = ["-m", "services.feedback_ingest.agent", "--pop", pop.name,
                         "--server", host, "--address", str(addr),
                         "--cgroup", str(cgroups[host].acct),
                         "--capacity-cores", str(capacity[pop.name])]  # fmt: skip
                self.spawn(f"agent-{host}", agent)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service (by pid), SIGKILL what is still there after the grace."""
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(5.0)
        self.procs.clear()


class Observer:
    """Follows pop-status.v1 and policies.v1 and the edges' maps; samples twice a second."""

    def __init__(self, result: Result, topo: Topology, run_id: str, interval_s: float = 0.5):
        self.result = result
        self.topo = topo
        self.interval_s = interval_s
        settings = Settings(topic_prefix=run_id)
        self.producer = TypedProducer(settings.kafka_bootstrap)
        self.consumer = TypedConsumer(
            settings.kafka_bootstrap,
            f"{run_id}-observer",
            [settings.topic(topics.POP_STATUS), settings.topic(topics.POLICIES)],
            dead_letter_producer=self.producer,
        )
        self.status: dict[str, PopStatus] = {}
        self.policy: dict[str, PolicyEvent] = {}
        self.edges = {p.name: _open(topo, p.edge, FwdRole.EDGE) for p in topo.pops}
        self.ids = {p.id: p.name for p in topo.pops}
        self.tables: dict[str, TableRecord] = {}  # the last table recorded per edge
        self.read_at: dict[str, float] = {}  # when each edge's table was last read
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self.error: BaseException | None = None

    def t(self, wall: float) -> float:
        return round(wall - self.result.epoch, 3)

    def _handle(self, received: Received) -> None:
        value = received.value
        with self.lock:
            if isinstance(value, PopStatus):
                self.status[value.pop] = value
                self.result.statuses.append(
                    StatusRecord(self.t(value.at), value.pop, value.state.value, value.utilisation)
                )
            elif isinstance(value, PolicyEvent):
                self.policy[value.source] = value
                self.result.policies.append(
                    PolicyRecord(
                        t=self.t(value.issued_at),
                        source=value.source,
                        action=value.action.value,
                        shares={s.destination: s.share for s in value.shares if s.tier == TIER},
                        version=value.version,
                        rule=value.reason.rule,
                    )
                )

    def _maps(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        away: dict[str, dict[str, int]] = {}
        draining: dict[str, int] = {}
        inter = int(Flag.INTER_POP)
        for pop, fwd in self.edges.items():
            image = LoaderMaps(fwd).read(TIER)
            read = self.t(_now())
            flags = image["flags"]
            is_inter = (flags & inter) != 0
            is_away = is_inter & ((flags & int(Flag.AWAY)) != 0)
            dests = image["secondary_pop"][is_away].tolist()
            away[pop] = {self.ids.get(d, str(d)): dests.count(d) for d in set(dests)}
            draining[pop] = int((is_inter & ~is_away).sum())
            buckets = [int(b) for b in is_away.nonzero()[0]]
            table = {
                self.ids.get(d, str(d)): [b for b, x in zip(buckets, dests, strict=True) if x == d]
                for d in set(dests)
            }
            last = self.tables.get(pop)
            if last is None or last.away != table:
                # changed after the previous read (or first read): in (since, read]
                since = self.read_at.get(pop, read)
                self.tables[pop] = TableRecord(read, pop, table, since)
                with self.lock:
                    self.result.tables.append(self.tables[pop])
            self.read_at[pop] = read
        return away, draining

    def sample(self) -> Sample:
        away, draining = self._maps()
        with self.lock:
            s = Sample(
                t=self.t(_now()),
                util={p: round(st.utilisation, 4) for p, st in self.status.items()},
                state={p: st.state.value for p, st in self.status.items()},
                shares={
                    src: {s.destination: s.share for s in ev.shares if s.tier == TIER}
                    for src, ev in self.policy.items()
                },
                away=away,
                draining=draining,
            )
            self.result.samples.append(s)
        return s

    def _run(self) -> None:
        next_sample = time.monotonic()
        try:
            while not self._stop.is_set():
                self.consumer.poll_batch(self._handle, timeout=0.05)
                if time.monotonic() >= next_sample:
                    self.sample()
                    next_sample += self.interval_s
        except BaseException as exc:  # reported by the scenario, which then stops
            self.error = exc

    def start(self) -> Observer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)
        with contextlib.suppress(Exception):
            self.consumer.close()
        for fwd in self.edges.values():
            fwd.close()

    def latest(self) -> Sample:
        with self.lock:
            return self.result.samples[-1]


def _open(topo: Topology, host: str, role: FwdRole) -> Forwarder:
    defines = {} if topo.table_bits == BUCKET_BITS else {"BUCKET_BITS": topo.table_bits}
    return Forwarder.open(role, host, pin_root=topo.pin_root(), defines=defines)


def node_counters(topo: Topology) -> dict[str, dict[str, int]]:
    """Every edge's and server's verdict counters, summed over tiers."""
    out: dict[str, dict[str, int]] = {}
    for pop in topo.pops:
        for host, role in [(pop.edge, FwdRole.EDGE), *((s, FwdRole.SERVER) for s in pop.servers)]:
            fwd = _open(topo, host, role)
            try:
                totals = dict.fromkeys((v.name.lower() for v in Verdict), 0)
                for per_tier in fwd.read_counters().values():
                    for v, c in per_tier.items():
                        totals[v.name.lower()] += c.packets
                out[host] = totals
            finally:
                fwd.close()
    return out


class ScenarioError(RuntimeError):
    """The scenario could not go on (a service died, a phase timed out)."""


class Harness:
    """The lab, cgroups, burners, services, work model and observer of one run; `close` undoes
    all of it (processes, namespaces, pins, cgroups, Redis keys, Kafka topics), also after a
    failure or Ctrl-C."""

    def __init__(self, out_dir: Path, plan: LoadPlan | None = None, log: Callable[[str], None]
                 = print) -> None:  # fmt: skip
        self.out_dir = out_dir
        self.plan = plan or LoadPlan()
        self.log = log
        self.run_id = f"scn-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        net = load_network(NETWORK)
        self.topo = build(net, table_bits=TABLE_BITS, prefix=PREFIX)
        self.lab = Lab(self.topo, net, DataPlane.XDP, state_dir=out_dir / "lab",
                       network_file=NETWORK)  # fmt: skip
        self.services = Services(self.topo, self.run_id, out_dir / "logs", {})
        self.cgroups = {
            h.name: lab_work.ServerCgroup(lab_work.cgroup_name(PREFIX, h.name))
            for h in self.topo.by_role(Role.SERVER)
        }
        self.result = Result(epoch=_now(), pops=[p.name for p in self.topo.pops],
                             table_bits=TABLE_BITS)  # fmt: skip
        self.result.settings = dict(LAB_TIMINGS) | {"run_id": self.run_id}
        self.result.addresses = {"vip": str(self.topo.vip())} | {
            e.host: e.addr.split("/")[0]
            for e in self.topo.ends()
            if e.ifname == "eth0" and e.host in {p.client for p in self.topo.pops}
        }
        self.observer: Observer | None = None
        self.work: lab_work.WorkModel | None = None
        self._server_fwd: dict[str, Forwarder] = {}
        self.traffic: dict[str, tuple[str, str, Path, subprocess.Popen[bytes]]] = {}
        self.progress_s = 5.0
        self._next_progress = 0.0

    # -- setup -----------------------------------------------------------------------------

    def open(self) -> Harness:
        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "lab").mkdir(parents=True, exist_ok=True)
        self.log(f"run {self.run_id}: building the lab ({PREFIX}*, XDP, 2^{TABLE_BITS} buckets)")
        lab_work.remove_cgroups(PREFIX)
        self.lab.up()
        self._client_ports()
        self._burners()
        self.log("starting the services: ingest, analytics, policy engine, 3 table writers, "
                 "9 forwarder syncs, 6 agents")  # fmt: skip
        self.services.start(self.cgroups, self.plan.capacity_cores)
        self.observer = Observer(self.result, self.topo, self.run_id).start()
        self.work = lab_work.WorkModel(
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
            cmd = [sys.executable, str(HERE / "lab_work.py"), "spin", "--duty-file", str(duty)]
            cg.add(self.lab.spawn(host, cmd, log_name="burner").pid)
            self._server_fwd[host] = _open(self.topo, host, FwdRole.SERVER)

    def _packets(self, host: str) -> int:
        """Packets the server processed itself (its share of the work)."""
        local = (Verdict.LOCAL, Verdict.LOCAL_HOPS_EXHAUSTED, Verdict.LOCAL_SELF_SECONDARY,
                 Verdict.RECEIVED_PEER)  # fmt: skip
        counts = self._server_fwd[host].read_counters()
        return sum(c[v].packets for c in counts.values() for v in local)

    def _wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every PoP has a table in Redis (its writer heard its servers) and a verdict."""
        client: redis.Redis[bytes] = redis.Redis.from_url(Settings().redis_url)
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
        self.log(f"services ready after {_now() - self.result.epoch:.0f}s")

    def check_alive(self) -> None:
        dead = self.services.dead()
        if dead:
            raise ScenarioError(f"service(s) exited: {dead}; logs in {self.out_dir / 'logs'}")
        if self.observer is not None and self.observer.error is not None:
            raise ScenarioError(f"observer failed: {self.observer.error!r}")

    # -- driving it ------------------------------------------------------------------------

    def t(self) -> float:
        return _now() - self.result.epoch

    def mark(self, name: str) -> float:
        at = round(self.t(), 3)
        self.result.marks[name] = at
        return at

    def start_traffic(self, name: str, region: str, rate: float, longs: int, tag: str) -> None:
        out = self.out_dir / "lab" / f"traffic-{name}.jsonl"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE / "lab_traffic.py"), "--target", str(self.topo.vip()),
               "--rate", str(rate), "--long", str(longs), "--epoch", str(self.result.epoch),
               "--out", str(out)]  # fmt: skip
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

    def set_load(self, on: bool) -> None:
        assert self.work is not None
        cost = self.plan.cost_ms if on else self.plan.idle_cost_ms
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
        self.log(f"  t={s.t:5.1f}s load {load} shares {shares or '-'} away {s.away} [{duty}]")

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
            ("cgroups", lambda: lab_work.remove_cgroups(PREFIX)),
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

    def _drop_redis(self) -> None:
        client: redis.Redis[bytes] = redis.Redis.from_url(Settings().redis_url)
        try:
            for key in client.scan_iter(f"{self.run_id}:*"):
                client.delete(key)
        finally:
            client.close()

    def _drop_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": Settings().kafka_bootstrap})
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


# -- the overload scenario -------------------------------------------------------------------


SETTLE_S = 1.0  # after a table change was seen: SYNs in flight across it (one retransmit) done
TOLERANCE = 0.03  # the promise: the share processed in B within +-3 points
TARGET_N = 3000  # connections per share check: sd <= 0.9 points, so 3 points is > 3 sd


def engine_windows(result: Result, end: float) -> list[Window]:
    """Where the engine's share of a->b held still (table applied, settled) up to `end`."""
    return table_windows(result, "a", "b", result.marks["load_on"], end, SETTLE_S)


def pin_windows(result: Result, end: float) -> list[Window]:
    return table_windows(result, "a", "b", result.marks["drained"], end, SETTLE_S)


def expected_n(windows: list[Window], rate: float, more_s: float = 0.0) -> tuple[float, int]:
    """(connections the windows will hold at `rate`, if the last one lasts `more_s` longer;
    connections the check needs at their share)."""
    span = sum(w.t1 - w.t0 for w in windows) + (more_s if windows else 0.0)
    share = sum(w.share * (w.t1 - w.t0) for w in windows) / max(1e-9, span - more_s)
    need = max(TARGET_N, int(1.2 * min_samples(share, TOLERANCE)))
    return span * rate, need


def overload(
    h: Harness, pin: bool = True, overload_s: float = 40.0, max_overload_s: float = 120.0
) -> Result:
    """Run the story (module docstring) on a harness that is open; returns its Result.

    The load stays on for at least `overload_s`, and longer (up to `max_overload_s`) until the
    stretches where the engine's share held still are long enough for TARGET_N connections
    from region a; the pin holds until its window has TARGET_N (extra short requests from
    region a while pinned: the load is off then, so they change nothing but the sample).
    """
    plan, log = h.plan, h.log
    rate_a = plan.rates["a"]
    for pop in h.topo.pops:
        rate, longs = plan.rates.get(pop.name, 0.0), plan.longs.get(pop.name, 0)
        h.start_traffic(f"region-{pop.name}", pop.name, rate, longs, "main")
    log(f"traffic: {dict(plan.rates)} short/s, {dict(plan.longs)} long-lived; baseline")
    h.wait("a's table read", lambda: any(x.pop == "a" for x in h.result.tables), 30.0)
    h.sleep(6.0)
    h.counters("load_on")
    on = h.mark("load_on")
    h.set_load(True)
    log(f"t={on:.0f}s load starts: {plan.cost_ms} ms CPU per packet")
    h.wait("a's policy", lambda: bool(h.forwarding("a")), 90.0)
    h.wait("a's maps", lambda: h.maps_away("a") > 0, 30.0)
    log(f"t={h.t():.0f}s a forwards: {h.forwarding('a')}")

    # The late long connections open 6 s before the load stops, once a sends a fair share
    # away (some then live in b), and close 6 s after the cancel: they live less than the drain
    # period after any decrease of a's share, so the drain must keep every one of them (they
    # close 4 s after the cancel, and at the latest 4 s before the drain period ran out).
    late_s = 6.0

    def late_time() -> bool:
        if h.t() >= on + max_overload_s - late_s:
            return True
        if h.t() < on + overload_s - late_s or h.maps_away("a") < 0.15 * (1 << TABLE_BITS):
            return False
        n, need = expected_n(engine_windows(h.result, h.t()), rate_a, late_s)
        return n >= need

    h.wait("enough connections at a steady engine share", late_time, max_overload_s + 30.0)
    h.wait("a's maps at 15 %", lambda: h.maps_away("a") >= 0.15 * (1 << TABLE_BITS), 30.0)
    h.start_traffic("late-a", "a", 0.0, plan.late_longs, "late")
    h.mark("late_longs_on")
    h.sleep(late_s)
    off = h.mark("load_off")
    h.set_load(False)
    n, need = expected_n(engine_windows(h.result, off), rate_a)
    log(f"t={off:.0f}s load stops (about {n:.0f} connections at steady shares, {need} needed); "
        f"policies now: a {h.forwarding('a')}, b {h.forwarding('b')}")  # fmt: skip

    def cancelled() -> bool:
        return not any(h.forwarding(p.name) for p in h.topo.pops)

    h.wait("every policy cancelled", cancelled, 120.0)
    cancel = max((p.t for p in h.result.policies if not p.shares and p.t >= off), default=h.t())
    h.result.marks["cancel"] = cancel
    h.wait("a's maps local", lambda: h.maps_away("a") == 0, 30.0)
    h.mark("a_local")
    log(f"t={cancel:.0f}s cancelled; long connections in b keep their second chance")
    drain_s = float(LAB_TIMINGS["POPSHIFT_TABLE_DRAIN_PERIOD_S"])
    late_on = h.result.marks["late_longs_on"]
    h.sleep(max(0.0, max(cancel + 1.0, min(cancel + 4.0, late_on + drain_s - 4.0)) - h.t()))
    h.stop_traffic("late-a")
    h.mark("late_longs_off")
    drained = lambda: all(h.maps_draining(p.name) == 0 for p in h.topo.pops)  # noqa: E731
    h.wait("the drain", drained, 90.0)
    h.mark("drained")
    log(f"t={h.t():.0f}s drained: every secondary cleared")
    if pin:
        pin_rate = plan.pin_rate
        h.start_traffic("pin-a", "a", pin_rate, 0, "pin")
        h.policy_cli("pin", "a", "b", "0.25", "--tier", str(TIER))
        h.mark("pin_on")
        want = round(0.25 * (1 << TABLE_BITS))
        h.wait("the pinned share in a's maps", lambda: h.maps_away("a") == want, 30.0)
        h.mark("pin_steady")

        def pinned_enough() -> bool:
            n, need = expected_n(pin_windows(h.result, h.t()), rate_a + pin_rate)
            return n >= need

        h.wait("enough connections at the pinned share", pinned_enough, 120.0)
        h.policy_cli("clear", "a")
        h.mark("pin_off")
        log(f"t={h.t():.0f}s pin cleared")
        h.stop_traffic("pin-a")
        h.sleep(1.0)
    for name in list(h.traffic):
        h.stop_traffic(name)
    h.counters("end")
    h.mark("end")
    return h.result


def cleanup(out_dir: Path) -> None:
    """After a hard kill of the scenario: its services (by recorded pid, if still theirs), the
    lab's processes, namespaces and pins, and the cgroups."""
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
    lab_work.remove_cgroups(PREFIX)


def report(result: Result, out_dir: Path) -> list[Check]:
    """Print the timeline, the totals and the checks; write the PNG. Returns the checks."""
    print(format_timeline(result))
    print(json.dumps(totals(result)))
    checks = all_checks(result)
    print(format_checks(checks))
    png = out_dir / "timeline.png"
    try:
        plot(result, png)
        print(f"plot: {png}")
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    return checks


def checks(result: Result) -> dict[str, Check]:
    """The end-to-end checks of one overload run by name (tests/e2e asserts the same ones)."""
    m = result.marks
    out = {"long_connections": check_long_connections(result)}
    engine = engine_windows(result, m["load_off"])
    out["engine_share"] = check_share(result, "a", "b", engine, TOLERANCE, label="engine")
    if "pin_off" in m:
        pinned = pin_windows(result, m["pin_off"])
        out["pinned_share"] = check_share(result, "a", "b", pinned, TOLERANCE, label="pinned")
    out["placement"] = check_placement(result, m["load_on"] - 5.0, m["end"])
    out["dsr"] = check_dsr(result)
    out["one_hop"] = check_one_hop(result)
    # after the cancel: from when a's table is local again (and in-flight connections done)
    t0 = max(m["cancel"] + 2.0, m.get("a_local", 0.0) + 1.0)
    local, survive = check_after_cancel(result, t0, m["drained"])
    out["after_cancel_local"], out["after_cancel_longs"] = local, survive
    return out


def all_checks(result: Result) -> list[Check]:
    return list(checks(result).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="popshift lab scenarios")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in (("overload", "run it, save result.json"), ("demo", "run and report")):
        ov = sub.add_parser(name, help=f"overload a, cascade, cancel, drain: {text}")
        ov.add_argument("--out", type=Path, default=Path("/tmp/popshift-scenario"))
        ov.add_argument("--no-pin", action="store_true", help="skip the pinned-share sub-check")
        ov.add_argument("--overload-s", type=float, default=40.0, help="load on at least")
        ov.add_argument("--max-overload-s", type=float, default=120.0, help="... and at most")
    cl = sub.add_parser("cleanup", help="remove what a killed run left")
    cl.add_argument("--out", type=Path, default=Path("/tmp/popshift-scenario"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root")
    if args.cmd == "cleanup":
        cleanup(args.out)
        return 0

    def _term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs" / "pids").unlink(missing_ok=True)
    path = args.out / "result.json"
    with Harness(args.out) as h:
        try:
            overload(h, not args.no_pin, args.overload_s, args.max_overload_s)
        finally:
            for name in list(h.traffic):  # keep what the load generators saw, even on failure
                h.stop_traffic(name, 5.0)
            h.result.save(path)
    print(f"result: {path}")
    if args.cmd == "demo":
        checks = report(h.result, args.out)
        return 0 if all(c.ok for c in checks) else 1
    return 0


@contextlib.contextmanager
def harness(out_dir: Path, plan: LoadPlan | None = None) -> Iterator[Harness]:
    with Harness(out_dir, plan) as h:
        yield h


if __name__ == "__main__":
    sys.exit(main())
