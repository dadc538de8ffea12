"""The popshift services of one scenario run, as processes in the host namespace.

Each service is started the way an operator would start it (`python -m services...`), with
its settings built by lab.settings and its output in a log of its own. Every pid is written to
`<logs>/pids` as it starts, so `python -m lab cleanup` can stop them after a hard kill of the
scenario.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from lab import settings
from lab.settings import REPO, env
from lab.topology import Topology
from lab.work import ServerCgroup
from popshift import topics
from popshift.bus import create_topics
from popshift.settings import Settings
from services.feedback_ingest.settings import AgentSettings
from services.forwarder.sync_settings import SyncSettings
from services.table_writer.settings import TableWriterSettings


class Services:
    """Starts, watches and stops the run's services; `stop` ends them all (by pid)."""

    def __init__(self, topo: Topology, run_id: str, log_dir: Path) -> None:
        self.topo = topo
        self.run_id = run_id
        self.log_dir = log_dir
        self.run_env = settings.run_env(run_id, topo.pin_root(), log_dir)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, more: Mapping[str, str] | None = None) -> dict[str, str]:
        """The caller's environment without its POPSHIFT_* settings (only where Kafka and
        Redis are), then the run's settings, then `more`."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("POPSHIFT_")}
        keep = ("POPSHIFT_KAFKA_BOOTSTRAP", "POPSHIFT_REDIS_URL")
        base |= {k: os.environ[k] for k in keep if k in os.environ}
        return base | {"PYTHONUNBUFFERED": "1"} | self.run_env | dict(more or {})

    def spawn(self, name: str, module: str, more: Mapping[str, str] | None = None) -> None:
        """`python -m module` with the run's settings (and `more`), logged to name.log."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=REPO,
                env=self.env(env(Settings, service_name=name) | dict(more or {})),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            with open(self.log_dir / "pids", "a") as pids:
                pids.write(f"{self.procs[name].pid} {name}\n")
        finally:
            log.close()

    def start(self, cgroups: Mapping[str, ServerCgroup], capacity: Mapping[str, float]) -> None:
        """Topics first, then ingest, analytics, the engine, and per PoP its table writer, a
        forwarder sync per node and an agent per server (reading its server's cgroup)."""
        own = Settings(topic_prefix=self.run_id)
        create_topics(own.kafka_bootstrap, [own.topic(t) for t in topics.ALL_TOPICS], 1)
        self.spawn("ingest", "services.feedback_ingest.ingest")
        self.spawn("analytics", "services.analytics.app")
        self.spawn("policy-engine", "services.policy_engine.service")
        for pop in self.topo.pops:
            writer = env(TableWriterSettings, table_pop=pop.name)
            self.spawn(f"table-writer-{pop.name}", "services.table_writer.service", more=writer)
            nodes = [(pop.edge, "edge"), *((s, "server") for s in pop.servers)]
            for node, role in nodes:
                node_env = env(SyncSettings, sync_pop=pop.name, sync_node=node, sync_role=role)
                self.spawn(f"sync-{node}", "services.forwarder.sync", more=node_env)
            for host, addr in zip(pop.servers, pop.server_addrs, strict=True):
                agent = env(
                    AgentSettings,
                    pop=pop.name,
                    server=host,
                    address=str(addr),
                    cgroup=str(cgroups[host].acct),
                    capacity_cores=capacity[pop.name],
                )
                self.spawn(f"agent-{host}", "services.feedback_ingest.agent", more=agent)

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
