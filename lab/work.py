"""Server CPU for the lab: a cgroup per compute server and a burner whose work follows its traffic.

All lab namespaces share the machine's CPUs, so a feedback agent reading /proc/stat would see
every server's load at once. Each server gets its own cgroup (cgroup v1 `cpu` for a CFS quota =
its capacity, `cpuacct` for the usage counter the agent reads with `--cgroup`), holding its HTTP
server and its burner.

Why the burner follows traffic: a burner at a fixed duty cannot be relieved by moving
connections, so the policy engine would (rightly) keep moving more until all of a PoP's new
connections are gone. Here the burner spins `cost_ms` of CPU for every packet the server's XDP
program delivers locally (its own verdict counters), as if each request cost that much: moving
A's connections to B really moves CPU from A's cgroups to B's, which is what popshift promises.
"Load starts" = the cost per packet rises (a heavier request mix); "load stops" = it drops.

    python -m lab.work spin --duty-file /run/popshift-lab/a-s1.duty   # in a-s1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
ACCT_ROOT = Path("/sys/fs/cgroup/cpuacct")
PERIOD_US = 10_000  # short CFS period: a throttled server waits ms, not 100 ms, for its turn
SLICE_S = 0.05
CG_PREFIX = "popshift-lab-"


def cgroup_name(prefix: str, host: str) -> str:
    return f"{CG_PREFIX}{prefix}{host}"


def _move_to_root(directory: Path, root: Path) -> None:
    """A cgroup can only be removed once empty: park whatever still runs there in the root."""
    procs = directory / "cgroup.procs"
    with contextlib.suppress(OSError):
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)


def remove_cgroups(prefix: str) -> None:
    """Every cgroup this lab (prefix) created, also after a crash."""
    for root in (CPU_ROOT, ACCT_ROOT):
        if not root.is_dir():
            continue
        for d in root.glob(f"{CG_PREFIX}{prefix}*"):
            _move_to_root(d, root)
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


@dataclass(frozen=True)
class ServerCgroup:
    """One server's pair of v1 cgroups: quota in `cpu`, usage in `cpuacct`."""

    name: str

    @property
    def cpu(self) -> Path:
        return CPU_ROOT / self.name

    @property
    def acct(self) -> Path:
        """What the agent's `--cgroup` points at (cpuacct.usage)."""
        return ACCT_ROOT / self.name

    def create(self, capacity_cores: float) -> None:
        for d in (self.cpu, self.acct):
            d.mkdir(exist_ok=True)
        (self.cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (self.cpu / "cpu.cfs_quota_us").write_text(str(int(capacity_cores * PERIOD_US)))

    def add(self, pid: int) -> None:
        for d in (self.cpu, self.acct):
            (d / "cgroup.procs").write_text(str(pid))

    def usage_s(self) -> float:
        return int((self.acct / "cpuacct.usage").read_text()) / 1e9


def available() -> bool:
    """cgroup v1 cpu and cpuacct hierarchies we can write (root on this machine's layout)."""
    return all((r / "cgroup.procs").exists() for r in (CPU_ROOT, ACCT_ROOT)) and os.access(
        CPU_ROOT, os.W_OK
    )


def duty_for(rate_pps: float, cost_ms: float, base: float = 0.0) -> float:
    """Share of one core the burner spins for `rate_pps` packets at `cost_ms` each."""
    return min(1.0, max(0.0, base + rate_pps * cost_ms / 1000.0))


class WorkModel:
    """Sets every server's burner duty from its packet rate, until stopped (a thread)."""

    def __init__(
        self,
        duty_files: Mapping[str, Path],
        packets: Callable[[str], int],
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.duty_files = dict(duty_files)
        self.packets = packets
        self.interval_s = interval_s
        self.clock = clock
        self.cost_ms: dict[str, float] = dict.fromkeys(duty_files, 0.0)
        self.duty: dict[str, float] = dict.fromkeys(duty_files, 0.0)
        self.rate: dict[str, float] = dict.fromkeys(duty_files, 0.0)
        self._stop = threading.Event()
        # set_cost (caller's thread) and _run (this model's thread) both write the duty files
        # through the same .tmp name: one writer at a time.
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="work-model", daemon=True)
        for f in self.duty_files.values():
            f.write_text("0\n")

    def set_cost(self, cost_ms: Mapping[str, float]) -> None:
        """Per-packet cost of each server (host -> ms); takes effect within one interval."""
        self.cost_ms.update(cost_ms)
        self._write()

    def _write(self) -> None:
        with self._write_lock:
            for host, f in self.duty_files.items():
                self.duty[host] = duty_for(self.rate[host], self.cost_ms[host])
                tmp = f.with_suffix(".tmp")
                tmp.write_text(f"{self.duty[host]:.4f}\n")
                tmp.replace(f)

    def _run(self) -> None:
        last = {h: (self.clock(), self.packets(h)) for h in self.duty_files}
        while not self._stop.wait(self.interval_s):
            for host in self.duty_files:
                now, count = self.clock(), self.packets(host)
                then, before = last[host]
                if now > then:
                    self.rate[host] = max(0.0, count - before) / (now - then)
                last[host] = (now, count)
            self._write()

    def start(self) -> WorkModel:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for f in self.duty_files.values():
            with contextlib.suppress(OSError):
                f.write_text("0\n")


def spin(duty_file: Path, stop: threading.Event) -> None:
    """Spin `duty` of every slice, re-reading the duty file each slice (0 = sleep)."""
    while not stop.is_set():
        try:
            duty = min(1.0, max(0.0, float(duty_file.read_text() or 0.0)))
        except (OSError, ValueError):
            duty = 0.0
        # CPU time, not wall time: under the cgroup's quota a throttled spinner must still ask
        # for its whole share, or the overload would hide behind the throttling.
        start = time.monotonic()
        end = time.process_time() + duty * SLICE_S
        while time.process_time() < end:
            pass
        stop.wait(max(0.0, SLICE_S - (time.monotonic() - start)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lab burner that follows a duty file")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("spin")
    sp.add_argument("--duty-file", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    spin(args.duty_file, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
