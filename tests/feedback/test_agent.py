"""The agent's parts: CPU from fixture files, probes against real local sockets, the buffer."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from popshift import tracing
from popshift.bus import MemoryBus, MemoryProducer, TypedProducer
from services.feedback_ingest.agent import Agent, BoundedBuffer
from services.feedback_ingest.cpu import CgroupCpu, ProcStatCpu, cgroup_quota_cores
from services.feedback_ingest.probe import Probe, make_check, percentile, summarise
from services.feedback_ingest.settings import AgentSettings
from tests.feedback.test_aggregate import hb

STAT = """cpu  {user} 0 {system} {idle} 0 0 0 0 0 0
cpu0 1 0 1 1 0 0 0 0 0 0
cpu1 1 0 1 1 0 0 0 0 0 0
cpu2 1 0 1 1 0 0 0 0 0 0
cpu3 1 0 1 1 0 0 0 0 0 0
intr 12345
"""


def test_proc_stat_busy_cores_over_the_interval(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(user=100, system=100, idle=800))
    cpu = ProcStatCpu(stat)
    assert cpu.capacity_cores == 4.0
    # 300 busy of 400 ticks on 4 CPUs: 3 cores busy
    stat.write_text(STAT.format(user=300, system=200, idle=900))
    assert cpu.sample() == pytest.approx(3.0)
    assert cpu.sample() == 0.0  # nothing moved


def test_cgroup_v2_usage_and_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.stat").write_text("usage_usec 1000000\nuser_usec 1\nsystem_usec 1\n")
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    now = [10.0]
    cpu = CgroupCpu(tmp_path, clock=lambda: now[0])
    assert cpu.capacity_cores == 2.5
    (tmp_path / "cpu.stat").write_text("usage_usec 4000000\n")
    now[0] = 12.0
    assert cpu.sample() == pytest.approx(1.5)  # 3 CPU-seconds in 2 s


def test_cgroup_v1_usage_and_unlimited_quota(tmp_path: Path) -> None:
    (tmp_path / "cpuacct.usage").write_text("0\n")
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota_cores(tmp_path) is None
    now = [0.0]
    cpu = CgroupCpu(tmp_path, clock=lambda: now[0])
    (tmp_path / "cpuacct.usage").write_text(str(int(0.5e9)))
    now[0] = 1.0
    assert cpu.sample() == pytest.approx(0.5)
    with pytest.raises(FileNotFoundError):
        CgroupCpu(tmp_path / "missing")


def test_the_real_proc_stat_reads() -> None:
    cpu = ProcStatCpu()
    assert cpu.capacity_cores >= 1
    assert 0.0 <= cpu.sample() <= cpu.capacity_cores


def test_percentiles_and_summary() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    qos = summarise([(1.0, True), (3.0, True), (100.0, False), (2.0, True)])
    assert qos is not None
    assert (qos.probes, qos.success_rate) == (4, 0.75)
    assert (qos.latency_p50_ms, qos.latency_p95_ms) == (2.0, 3.0)
    all_failed = summarise([(5.0, False)])
    assert all_failed is not None
    assert all_failed.success_rate == 0.0
    assert all_failed.latency_p95_ms is None
    assert summarise([]) is None


@pytest.fixture
def http_service() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probes_against_real_sockets(http_service: str) -> None:
    assert make_check(f"{http_service}/health", 1.0)()
    assert not make_check(f"{http_service}/broken", 1.0)()
    assert make_check(f"tcp://{http_service.removeprefix('http://')}", 1.0)()
    probe = Probe(make_check(f"tcp://127.0.0.1:{_closed_port()}", 0.5), 0.01, 0.5)
    assert probe.probe_once()[1] is False
    with pytest.raises(ValueError, match="scheme"):
        make_check("udp://127.0.0.1:53", 1.0)


def test_probe_thread_measures_between_takes(http_service: str) -> None:
    probe = Probe(make_check(f"{http_service}/health", 1.0), 0.02, 1.0).start()
    try:
        time.sleep(0.3)
        qos = probe.take()
    finally:
        probe.stop()
    assert qos is not None
    assert qos.probes >= 3
    assert qos.success_rate == 1.0
    assert qos.latency_p95_ms is not None
    assert 0.0 < qos.latency_p95_ms < 1000.0


def test_buffer_drops_the_oldest_and_counts() -> None:
    buf = BoundedBuffer(3)
    for seq in range(1, 6):
        buf.push(hb(seq=seq))
    assert buf.dropped == 2
    assert [buf.pop().seq for _ in range(len(buf))] == [3, 4, 5]


class _FixedCpu:
    capacity_cores = 2.0

    def sample(self) -> float:
        return 2.5  # jitter over capacity: clamped, not rejected


def test_agent_never_waits_for_an_unreachable_kafka() -> None:
    settings = AgentSettings(
        pop="a",
        server="a1",
        address="10.0.0.1",
        kafka_bootstrap=f"127.0.0.1:{_closed_port()}",
        buffer_size=20,
        max_in_flight=5,
    )
    producer = TypedProducer(settings.kafka(), {"log_level": 0})
    agent = Agent(settings, _FixedCpu(), producer)
    started = time.perf_counter()
    beats = [agent.beat() for _ in range(100)]
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"100 beats took {elapsed:.2f}s: the agent waited on Kafka"
    stats = agent.stats()
    assert stats.beats == 100
    assert stats.sent == 5  # handed to the client, unacknowledged
    assert stats.buffered == 20
    assert stats.dropped == 75
    assert stats.sent + stats.buffered + stats.dropped == stats.beats
    assert beats[-1].cpu_busy_cores == 2.0
    assert beats[-1].interval_s == settings.interval_s  # the ingest times liveness by it
    assert [b.seq for b in beats] == list(range(beats[0].seq, beats[0].seq + 100))
    producer._producer.purge()  # nothing will ever be delivered: drop it, leave no thread busy


class _StuckProducer(MemoryProducer):
    """A Kafka client that takes messages and never reports on them (a half-open connection)."""

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        self.sent = getattr(self, "sent", 0) + 1


def test_a_stalled_kafka_client_is_replaced_and_the_server_heard_again() -> None:
    settings = AgentSettings(
        pop="a", server="a1", address="10.0.0.1", max_in_flight=3, producer_stall_s=10.0
    )
    now = [0.0]
    bus = MemoryBus()
    stuck, fresh = _StuckProducer(bus), MemoryProducer(bus)
    agent = Agent(
        settings, _FixedCpu(), stuck, new_producer=lambda: fresh, monotonic=lambda: now[0]
    )
    for _ in range(5):  # 3 in flight, never answered; not yet a stall
        agent.beat()
        now[0] += 2.0
    assert agent.producer is stuck and stuck.sent == 3 and agent.stats().producer_restarts == 0
    for _ in range(3):
        agent.beat()
        now[0] += 2.0
    assert agent.producer is fresh  # 10 s without progress: replaced
    stats = agent.stats()
    assert stats.producer_restarts == 1 and stats.abandoned == 3
    assert fresh.delivered >= 5  # the buffered heartbeats went out through the new client
    assert stats.sent == stats.delivered + stats.abandoned + agent.in_flight
    # A client that delivers is never replaced, however long it runs.
    for _ in range(50):
        agent.beat()
        now[0] += 2.0
    assert agent.stats().producer_restarts == 1
