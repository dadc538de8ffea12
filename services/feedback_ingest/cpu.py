"""CPU busy cores of this server (/proc/stat) or of one cgroup (its usage counter).

A sampler returns busy cores averaged since its previous call, so the agent reports exactly one
interval per heartbeat. Paths are parameters so tests feed fixture files instead of the kernel's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol


class CpuSampler(Protocol):
    capacity_cores: float

    def sample(self) -> float:
        """Busy cores since the previous sample (0 on the first)."""
        ...


def _proc_stat_totals(text: str) -> tuple[int, int, int]:
    """(busy ticks, total ticks, CPUs) from /proc/stat's aggregate and per-CPU lines."""
    busy = total = cpus = 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
            # guest time is already counted in user/nice
            busy = user + nice + system + irq + softirq + steal
            total = busy + idle + iowait
        elif line.startswith("cpu"):
            cpus += 1
    if total == 0 or cpus == 0:
        raise ValueError("no aggregate or per-CPU lines in /proc/stat")
    return busy, total, cpus


class ProcStatCpu:
    """The whole machine: busy share of all CPU ticks, times the number of CPUs."""

    def __init__(self, path: str | Path = "/proc/stat") -> None:
        self._path = Path(path)
        self._busy, self._total, cpus = _proc_stat_totals(self._path.read_text())
        self.capacity_cores = float(cpus)

    def sample(self) -> float:
        busy, total, cpus = _proc_stat_totals(self._path.read_text())
        d_busy, d_total = busy - self._busy, total - self._total
        self._busy, self._total = busy, total
        if d_total <= 0:
            return 0.0
        return max(0.0, d_busy / d_total * cpus)


def _cgroup_usage_s(directory: Path) -> float:
    """CPU seconds a cgroup used: v2 ``cpu.stat`` usage_usec, or v1 ``cpuacct.usage`` (ns)."""
    stat = directory / "cpu.stat"
    if stat.exists():
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    v1 = directory / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    raise FileNotFoundError(f"{directory}: neither cpu.stat (usage_usec) nor cpuacct.usage")


def cgroup_quota_cores(directory: Path) -> float | None:
    """The cgroup's CPU limit in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), if any."""
    cpu_max = directory / "cpu.max"
    if cpu_max.exists():
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or "100000")
    quota_file, period_file = directory / "cpu.cfs_quota_us", directory / "cpu.cfs_period_us"
    if quota_file.exists() and period_file.exists():
        quota_us = int(quota_file.read_text())
        return None if quota_us < 0 else quota_us / int(period_file.read_text())
    return None


def available_cores() -> float:
    """CPUs this process may run on."""
    return float(len(os.sched_getaffinity(0)))


class CgroupCpu:
    """One cgroup (a service's slice or container): usage counter over wall time."""

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = Path(directory)
        self._clock = clock
        self._usage = _cgroup_usage_s(self._dir)
        self._at = clock()
        self.capacity_cores = cgroup_quota_cores(self._dir) or available_cores()

    def sample(self) -> float:
        usage, at = _cgroup_usage_s(self._dir), self._clock()
        d_usage, d_at = usage - self._usage, at - self._at
        self._usage, self._at = usage, at
        if d_at <= 0:
            return 0.0
        return max(0.0, d_usage / d_at)
