"""A real agent process on this machine: real CPU from /proc/stat, raised by a CPU burner."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import pytest

from popshift import topics as t
from popshift.bus import create_topics
from services.feedback_ingest.settings import PipelineSettings
from tests.feedback.helpers import TopicReader, service

pytestmark = pytest.mark.kafka

BURN = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def test_a_real_agent_reports_real_cpu_and_a_burner_raises_it(
    kafka_bootstrap: str, unique: str
) -> None:
    feedback = PipelineSettings(topic_prefix=unique).topic(t.FEEDBACK)
    create_topics(kafka_bootstrap, [feedback], 1)
    reader = TopicReader(kafka_bootstrap, feedback, f"{unique}-reader")
    args = ["--pop", "a", "--server", "a1", "--address", "127.0.0.1", "--interval-s", "0.25"]
    env = {"POPSHIFT_KAFKA_BOOTSTRAP": kafka_bootstrap, "POPSHIFT_TOPIC_PREFIX": unique}
    try:
        with service("services.feedback_ingest.agent", env, *args):
            idle = list(reader.wait_for(lambda ms: len(ms) >= 6 and ms, 30, "idle heartbeats"))
            capacity = idle[0].value.capacity_cores
            burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(int(capacity))]
            try:
                time.sleep(0.6)  # burners are running; skip the interval that straddles start
                mark = len(reader.poll())
                busy = reader.wait_for(
                    lambda ms: len(ms) >= mark + 6 and ms[mark:], 30, "busy heartbeats"
                )
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
    finally:
        reader.close()
    beats = [r.value for r in idle + busy]
    assert all(b.pop == "a" and b.server == "a1" and str(b.address) == "127.0.0.1" for b in beats)
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})  # increasing, no repeats
    idle_cores = statistics.median(r.value.cpu_busy_cores for r in idle[1:])
    busy_cores = statistics.median(r.value.cpu_busy_cores for r in busy)
    # every CPU burnt: the agent must see (almost) the whole machine busy
    assert busy_cores > 0.8 * capacity, (idle_cores, busy_cores, capacity)
    assert busy_cores > idle_cores
