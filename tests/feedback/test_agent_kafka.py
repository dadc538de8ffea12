"""A real agent process on this machine reports real CPU, and a CPU burner raises it.

Two sources: the whole machine (/proc/stat) and a cgroup holding only the burner. The cgroup one
is the sharp test: other work on a shared machine cannot hide the burner's core there.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from popshift import topics as t
from popshift.bus import create_topics
from schemas.messages import ServerHeartbeat
from services.feedback_ingest.settings import PipelineSettings
from tests.feedback.helpers import TopicReader, service

pytestmark = pytest.mark.kafka

BURN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


@contextmanager
def burners(count: int, cgroup: Path | None = None) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(count)]
    try:
        if cgroup is not None:
            for p in procs:
                (cgroup / "cgroup.procs").write_text(str(p.pid))
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def idle_then_busy(
    bootstrap: str, unique: str, extra: list[str], burn: int, cgroup: Path | None = None
) -> tuple[list[ServerHeartbeat], list[ServerHeartbeat]]:
    """Heartbeats of a real agent process before and while ``burn`` burners run."""
    feedback = PipelineSettings(topic_prefix=unique).topic(t.FEEDBACK)
    create_topics(bootstrap, [feedback], 1)
    reader = TopicReader(bootstrap, feedback, f"{unique}-reader")
    args = ["--pop", "a", "--server", "a1", "--address", "127.0.0.1", "--interval-s", "0.25"]
    env = {"POPSHIFT_KAFKA_BOOTSTRAP": bootstrap, "POPSHIFT_TOPIC_PREFIX": unique}
    try:
        with service("services.feedback_ingest.agent", env, *args, *extra):
            idle = list(reader.wait_for(lambda ms: len(ms) >= 6 and ms, 30, "idle heartbeats"))
            with burners(burn, cgroup):
                time.sleep(0.6)  # skip the interval that straddles the burners' start
                mark = len(reader.poll())
                busy = reader.wait_for(lambda ms: len(ms) >= mark + 6 and ms[mark:], 30, "busy")
    finally:
        reader.close()
    beats = [r.value for r in idle + busy]
    assert all(b.pop == "a" and b.server == "a1" and str(b.address) == "127.0.0.1" for b in beats)
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})  # increasing, no repeats
    return [r.value for r in idle[1:]], [r.value for r in busy]


def median_busy(beats: list[ServerHeartbeat]) -> float:
    return statistics.median(b.cpu_busy_cores for b in beats)


def test_machine_cpu_from_proc_stat_rises_to_full_under_burners(
    kafka_bootstrap: str, unique: str
) -> None:
    capacity = float(len(os.sched_getaffinity(0)))
    idle, busy = idle_then_busy(kafka_bootstrap, unique, [], burn=int(capacity))
    assert all(b.capacity_cores == capacity for b in idle + busy)
    assert all(0.0 <= b.cpu_busy_cores <= capacity for b in idle)
    # every CPU burnt: the agent sees (almost) the whole machine busy
    assert median_busy(busy) > 0.8 * capacity, (median_busy(idle), median_busy(busy))
    assert median_busy(busy) >= median_busy(idle)


def test_cgroup_cpu_sees_exactly_the_burner(kafka_bootstrap: str, unique: str) -> None:
    if not os_access_w(CPUACCT):
        pytest.skip("needs a writable cgroup v1 cpuacct hierarchy (root)")
    cgroup = CPUACCT / f"popshift-{unique}"
    cgroup.mkdir()
    try:
        idle, busy = idle_then_busy(
            kafka_bootstrap, unique, ["--cgroup", str(cgroup), "--capacity-cores", "2"], 1, cgroup
        )
    finally:
        cgroup.rmdir()
    assert median_busy(idle) < 0.05  # nothing runs in the empty cgroup
    # one burner: one core if the machine is free, less when others compete for the CPUs
    assert 0.3 < median_busy(busy) <= 1.1, median_busy(busy)
    assert all(b.capacity_cores == 2.0 for b in idle + busy)


def os_access_w(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)
