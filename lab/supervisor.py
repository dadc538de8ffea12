"""The popshift services of one scenario run, as processes in the host namespace.

Each service is started the way an operator would start it (`python -m services...`; a
forwarder sync with its node file), with its settings built by lab.settings and its output in
a log of its own. Every pid is written to `<logs>/pids` as it starts, so `python -m lab
cleanup` can stop them after a hard kill of the scenario.

`keep_alive` makes this a process manager (systemd's Restart=always, RestartSec=): a service
that exits is started again, the same way, after a short delay. The chaos run (lab.chaos)
kills services and relies on it; the plain scenario leaves it off, so there a service that
exits fails the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lab import settings
from lab.settings import REPO, env
from lab.topology import Topology
from lab.work import ServerCgroup
from popshift import topics
from popshift.bus import create_topics
from popshift.console import ConsoleSettings
from popshift.settings import Settings
from services.feedback_ingest.settings import AgentSettings
from services.table_writer.settings import TableWriterSettings


@dataclass(frozen=True)
class Spec:
    """How a service is started: `python -m module *args` with the run's settings + `more`."""

    module: str
    args: tuple[str, ...] = ()
    more: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Restart:
    name: str
    exited_at: float  # wall time the supervisor saw it gone
    started_at: float  # wall time it was started again
    returncode: int


CONSOLE_PORT = 8088
"""The console's documented port, taken by the lab's console when it is free."""


def _free_port(wanted: int = 0) -> int:
    """``wanted`` if nothing listens on it, else any free loopback port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Services:
    """Starts, watches (and with `keep_alive` restarts) and stops the run's services."""

    def __init__(self, topo: Topology, run_id: str, log_dir: Path,
                 extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.topo = topo
        self.run_id = run_id
        self.log_dir = log_dir
        self.run_env = settings.run_env(run_id, topo.pin_root(), log_dir) | dict(extra or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.specs: dict[str, Spec] = {}
        self.restarts: list[Restart] = []
        self.metrics_ports: dict[str, int] = {}  # name -> its Prometheus port (kept on restart)
        self.console_port = _free_port(CONSOLE_PORT)
        self.restart_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._granted = False

    def grant(self) -> None:
        """The run's topics, then its principals and ACLs for its topics, groups and keys
        (`popshift access grant` as the admin, with the services' settings), before any
        service starts: services neither create topics nor users."""
        if self._granted:
            return
        own = Settings(topic_prefix=self.run_id, principal="admin")
        create_topics(own.kafka(), [own.topic(t) for t in topics.ALL_TOPICS], 1)
        admin = self.env() | {"POPSHIFT_PRINCIPAL": "admin"}
        pops = ",".join(p.name for p in self.topo.pops)
        subprocess.run(
            [sys.executable, "-m", "popshift.cli", "access", "grant", "--pops", pops],
            cwd=REPO, env=admin, check=True, timeout=120, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self._granted = True

    def env(self, more: Mapping[str, str] | None = None) -> dict[str, str]:
        """The caller's environment without its POPSHIFT_* settings (only where Kafka, Redis
        and the secrets are: each service logs in as its own principal), then the run's
        settings, then `more`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("POPSHIFT_")}
        keep = ("POPSHIFT_KAFKA_BOOTSTRAP", "POPSHIFT_REDIS_URL", "POPSHIFT_SECRETS_DIR",
                "POPSHIFT_STATE_DIR", "POPSHIFT_OTLP_ENDPOINT",
                "POPSHIFT_ZIPKIN_ENDPOINT")  # fmt: skip
        base |= {k: os.environ[k] for k in keep if k in os.environ}
        return base | {"PYTHONUNBUFFERED": "1"} | self.run_env | dict(more or {})

    def spawn(self, name: str, module: str, more: Mapping[str, str] | None = None,
              args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:  # fmt: skip
        """`python -m module *args` with the run's settings (and `more`), logged to name.log."""
        with self._lock:
            self.specs[name] = Spec(module, args, dict(more or {}))
            return self._launch(name)

    def _launch(self, name: str) -> subprocess.Popen[bytes]:
        spec = self.specs[name]
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", spec.module, *spec.args],
                cwd=REPO,
                env=self.env(
                    env(Settings, service_name=name, metrics_port=self._metrics_port(name))
                    | dict(spec.more)
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with open(self.log_dir / "pids", "a") as pids:
                pids.write(f"{proc.pid} {name}\n")
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def _metrics_port(self, name: str) -> int:
        """A free loopback port per service (the documented defaults would collide: the lab
        runs several of each on one host), the same one again after a restart."""
        if name not in self.metrics_ports:
            self.metrics_ports[name] = _free_port()
        return self.metrics_ports[name]

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}/"

    def start_sync(self, host: str, node_file: Path) -> subprocess.Popen[bytes]:
        """A node's forwarder sync with its node file (which names PoP, node and role); the
        lab calls this while it attaches the data plane (lab.dataplane.attach)."""
        args = ("--node-file", str(node_file))
        self.grant()
        return self.spawn(f"sync-{host}", "services.forwarder.sync", args=args)

    def start(self, cgroups: Mapping[str, ServerCgroup], capacity: Mapping[str, float]) -> None:
        """Topics first, then ingest, analytics, the engine, and per PoP its table writer and
        an agent per server (reading its server's cgroup). The syncs run already."""
        self.grant()
        self.spawn("ingest", "services.feedback_ingest.ingest")
        self.spawn("analytics", "services.analytics.app")
        self.spawn("policy-engine", "services.policy_engine.service")
        console = env(ConsoleSettings, console_port=self.console_port)
        self.spawn("console", "popshift.console", more=console)
        for pop in self.topo.pops:
            writer = env(TableWriterSettings, table_pop=pop.name)
            self.spawn(f"table-writer-{pop.name}", "services.table_writer.service", more=writer)
            for host, addr in zip(pop.servers, pop.server_addrs, strict=True):
                agent = env(
                    AgentSettings,
                    pop=pop.name,
                    server=host,
                    address=str(addr),
                    cgroup=str(cgroups[host].acct),
                    capacity_cores=capacity[pop.name],
                    interval_s=settings.HEARTBEAT_S,
                )
                self.spawn(f"agent-{host}", "services.feedback_ingest.agent", more=agent)

    # -- a process manager -----------------------------------------------------------------

    def keep_alive(self, restart_s: float) -> None:
        """From now on, a service that exits is started again after `restart_s`."""
        self.restart_s = restart_s
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="keep-alive", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        gone: dict[str, float] = {}
        while not self._stop.wait(0.1):
            with self._lock:
                for name, proc in self.procs.items():
                    if proc.poll() is not None and name not in gone:
                        gone[name] = time.time()
                for name, at in list(gone.items()):
                    if name not in self.specs:  # retired
                        del gone[name]
                    elif time.time() >= at + self.restart_s:
                        code = self.procs[name].returncode
                        self._launch(name)
                        self.restarts.append(Restart(name, at, time.time(), code))
                        del gone[name]

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send `sig` to a service (kill -9 by default); returns its pid."""
        with self._lock:
            proc = self.procs[name]
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            return proc.pid

    def retire(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop a service for good: the keeper does not start it again."""
        with self._lock:
            self.specs.pop(name, None)
            proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait(15.0)

    def running(self, name: str) -> bool:
        with self._lock:
            proc = self.procs.get(name)
            return proc is not None and proc.poll() is None

    def dead(self) -> list[str]:
        """Services that exited and will not be started again."""
        if self._keeper is not None:
            return []
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every service (by pid), SIGKILL what is still there after the grace."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(5.0)
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
