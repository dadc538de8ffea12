"""Faults on a cluster: is any heartbeat lost when a broker, an ingest and an analytics worker die?

The cluster of deploy/cluster/up.sh (three Kafka nodes in one KRaft quorum; popshift's topics
with replication factor 3 and min.insync.replicas 2), two ingest processes and two analytics
(faust) workers sharing the partitions, fed ``--pops`` x ``--servers`` heartbeats at 1 Hz
(default 300 x 100 = 30,000/s). Then, SIGKILL: one broker at ``--broker-at``, one ingest at
``--ingest-at``, one analytics worker at ``--analytics-at``; none comes back during the run.

Reported, from a reader of pop-load.v1 and pop-status.v1 in its own process:

- heartbeats lost: every server's sequence numbers 1..N that were sent, minus those some
  pop-load counted (each server entry of a pop-load says which it aggregated:
  ``seq_first``..``seq_last``, ``heartbeats``; services/feedback_ingest/aggregate.py);
- pop-statuses missing for more than one analytics window (5 s), per PoP;
- time to rebalance after each kill: the longest silence of any PoP's pop-load (ingest) or
  pop-status (analytics) across the kill;
- the ingest group's consumer lag peak (messages, and seconds at the offered rate);
- PoPs wrongly flagged during the run: a pop-status with no healthy capacity (dead), or a
  pop-load with a server marked down (every agent kept sending).

    sudo? no: python bench/cluster_faults.py [--pops 300] [--servers 100] [--duration 110]

Last lines: ``cluster_lost_heartbeats: N`` then ``cluster_rebalance_s: S``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.feedback_pipeline import Offered, network_yaml, offer, start  # noqa: E402
from popshift import topics  # noqa: E402
from popshift.bus import create_topics  # noqa: E402
from popshift.credentials import KafkaAccess  # noqa: E402
from popshift.settings import Settings  # noqa: E402

CLUSTER = REPO / "deploy" / "cluster"
WINDOW_S = 5.0  # the analytics window of this run (and what "one window" means below)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pops", type=int, default=300)
    p.add_argument("--servers", type=int, default=100, help="servers per PoP, 1 heartbeat/s each")
    p.add_argument("--duration", type=float, default=110.0, help="seconds of heartbeats")
    p.add_argument("--broker-at", type=float, default=20.0)
    p.add_argument("--ingest-at", type=float, default=45.0)
    p.add_argument("--analytics-at", type=float, default=75.0)
    p.add_argument("--drain", type=float, default=8.0, help="seconds after the ingests caught up")
    p.add_argument("--drain-max", type=float, default=300.0, help="most seconds to wait for that")
    p.add_argument("--feedback-partitions", type=int, default=6)
    return p.parse_args()


# --- the reader --------------------------------------------------------------------------------


@dataclass
class Coverage:
    """One server's heartbeats counted so far: everything below ``next`` except ``gaps``."""

    next: int = 1
    gaps: list[list[int]] = field(default_factory=list)  # [first, last] not (yet) counted
    unsure: int = 0  # inside a counted span but not aggregated (out of order, dropped)

    def add(self, first: int, last: int, count: int) -> None:
        self.unsure += max(0, (last - first + 1) - count)
        if first > self.next:
            self.gaps.append([self.next, first - 1])
        elif first < self.next and self.gaps:  # a re-read after a takeover fills old gaps
            kept = []
            for a, b in self.gaps:
                if b < first or a > last:
                    kept.append([a, b])
                    continue
                if a < first:
                    kept.append([a, first - 1])
                if b > last:
                    kept.append([last + 1, b])
            self.gaps = kept
        self.next = max(self.next, last + 1)

    def lost(self, sent: int) -> int:
        missing = sum(min(b, sent) - a + 1 for a, b in self.gaps if a <= sent)
        return missing + max(0, sent - (self.next - 1)) + self.unsure


@dataclass
class Seen:
    coverage: dict[str, Coverage] = field(default_factory=dict)
    loads: dict[str, list[float]] = field(default_factory=dict)  # PoP -> receive times
    statuses: dict[str, list[float]] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    servers_down: set[str] = field(default_factory=set)
    lag: list[tuple[float, int]] = field(default_factory=list)  # (time, messages behind)


def _assign_from_now(c: Consumer, names: list[str]) -> None:
    now_ms = int(time.time() * 1000)
    parts = [
        TopicPartition(n, p, now_ms)
        for n in names
        for p in c.list_topics(n, timeout=10).topics[n].partitions
    ]
    c.assign(c.offsets_for_times(parts, timeout=10))


def _group_lag(kafka: KafkaAccess, group: str, topic: str, partitions: int) -> int:
    c = Consumer({**kafka.config(), "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=5)
        behind = 0
        for tp in tps:
            _, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
            behind += max(0, high - max(tp.offset, 0))
        return behind
    finally:
        c.close()


def reader_main(
    kafka: KafkaAccess, names: tuple[str, str, str, str, int], stop: Any, out: Any
) -> None:
    """In its own process: the bench's producer loop must not delay what it measures."""
    load_topic, status_topic, feedback, group, partitions = names
    seen = Seen()
    c = Consumer({**kafka.config(), "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                  "enable.auto.commit": False})  # fmt: skip
    _assign_from_now(c, [load_topic, status_topic])
    next_lag = time.monotonic()
    while not stop.is_set():
        for m in c.consume(1000, timeout=0.2):
            if m.error() is not None:
                continue
            now = time.time()
            doc = json.loads(m.value() or b"{}")
            pop = doc["pop"]
            if m.topic() == load_topic:
                seen.loads.setdefault(pop, []).append(now)
                for s in doc["servers"]:
                    if not s.get("healthy", True):
                        seen.servers_down.add(pop)
                    if s.get("seq_first") is not None:
                        cov = seen.coverage.setdefault(s["server"], Coverage())
                        cov.add(s["seq_first"], s["seq_last"], s.get("heartbeats", 0))
            else:
                seen.statuses.setdefault(pop, []).append(now)
                if doc["capacity_cores"] <= 0.0:
                    seen.dead.add(pop)
        if time.monotonic() >= next_lag:
            next_lag += 2.0
            try:
                seen.lag.append((time.time(), _group_lag(kafka, group, feedback, partitions)))
            except Exception as exc:  # a broker just killed: the next sample will do
                print(f"lag sample failed: {exc}", flush=True)
    c.close()
    out.put(seen)


# --- the run -------------------------------------------------------------------------------------


def cluster_env() -> dict[str, str]:
    subprocess.run(["bash", str(CLUSTER / "up.sh")], check=True, timeout=600)
    state = Path(os.environ.get("POPSHIFT_CLUSTER_STATE", CLUSTER / "state"))
    env = {}
    for line in (state / "env").read_text().splitlines():
        if line.startswith("export "):
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = v
    return env


def broker_pid(node: int) -> int:
    state = Path(os.environ.get("POPSHIFT_CLUSTER_STATE", CLUSTER / "state"))
    return int((state / f"kafka-{node}" / "kafka" / "kafka.pid").read_text().strip())


def longest_silence(times: dict[str, list[float]], around: float, span_s: float) -> float:
    """The longest gap between two messages of any one PoP within ``span_s`` after ``around``
    (counted from the last message before it; the next fault ends the span)."""
    worst = 0.0
    for ts in times.values():
        before = [t for t in ts if t <= around]
        after = [t for t in ts if around < t <= around + span_s]
        seq = ([before[-1]] if before else []) + after
        for a, b in itertools.pairwise(seq):
            worst = max(worst, b - a)
    return worst


def main() -> int:
    args = parse_args()
    cluster = cluster_env()
    prefix = f"cf-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="popshift-cluster-"))
    pops = network_yaml(tmp / "network.yaml", args.pops)
    (tmp / "analytics.yaml").write_text(
        yaml.safe_dump({"defaults": {"window_s": WINDOW_S, "refresh_s": 0.001}})
    )
    names = Settings(
        topic_prefix=prefix,
        principal="admin",
        kafka_bootstrap=cluster["POPSHIFT_KAFKA_BOOTSTRAP"],
        secrets_dir=cluster["POPSHIFT_SECRETS_DIR"],
    )
    kafka = names.kafka()
    feedback, pop_load, pop_status = (
        names.topic(t) for t in (topics.FEEDBACK, topics.POP_LOAD, topics.POP_STATUS)
    )
    durable = {"replication_factor": 3, "min_insync_replicas": 2}
    create_topics(kafka, [feedback], args.feedback_partitions, **durable)
    create_topics(kafka, [pop_load, pop_status], 4, **durable)
    group = f"{prefix}-ingest"
    env = {
        **cluster,
        "POPSHIFT_PRINCIPAL": "admin",
        "POPSHIFT_TOPIC_PREFIX": prefix,
        "POPSHIFT_NETWORK_FILE": str(tmp / "network.yaml"),
        "POPSHIFT_INGEST_GROUP": group,
        "POPSHIFT_ANALYTICS_APP_ID": f"{prefix}-analytics",
        "POPSHIFT_ANALYTICS_CONFIG": str(tmp / "analytics.yaml"),
        "POPSHIFT_TOPIC_PARTITIONS": "4",
        "POPSHIFT_METRICS_PORT": "0",
    }
    ingests = [start("services.feedback_ingest.ingest", env) for _ in range(2)]
    workers = [
        start(
            "services.analytics.app", env | {"POPSHIFT_ANALYTICS_DATADIR": str(tmp / f"faust{i}")}
        )
        for i in range(2)
    ]
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    reader = ctx.Process(
        target=reader_main,
        args=(kafka, (pop_load.name, pop_status.name, feedback.name, group,
                      args.feedback_partitions), stop, out),
    )  # fmt: skip
    reader.start()
    producer = Producer({**kafka.config(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    offered = Offered(pops, args.servers, "server")
    units = args.pops * args.servers
    time.sleep(8.0)  # the workers join their groups
    print(f"cluster: {cluster['POPSHIFT_KAFKA_BOOTSTRAP']}; {args.pops} PoPs x {args.servers} "
          f"servers at 1 Hz = {units:,}/s; 2 ingests, 2 analytics workers", flush=True)  # fmt: skip
    faults = sorted(
        [(args.broker_at, "broker"), (args.ingest_at, "ingest"), (args.analytics_at, "analytics")]
    )
    killed_at: dict[str, float] = {}
    sent = 0
    try:
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < args.duration:
            while faults and elapsed >= faults[0][0]:
                _, what = faults.pop(0)
                pid = {"broker": lambda: broker_pid(2), "ingest": lambda: ingests[0].pid,
                       "analytics": lambda: workers[0].pid}[what]()  # fmt: skip
                os.kill(pid, signal.SIGKILL)
                killed_at[what] = time.time()
                print(f"t={elapsed:.0f}s SIGKILL {what} (pid {pid})", flush=True)
            sent = offer(
                producer, feedback.name, offered.server_message, sent, int(elapsed * units), units
            )
            time.sleep(0.002)
        left = producer.flush(60)
        offered_s = time.monotonic() - t0
        print(f"sent {sent:,} heartbeats in {offered_s:.1f} s ({sent / offered_s:,.0f}/s); "
              f"{left} undelivered", flush=True)  # fmt: skip
        # Counted only once the ingests caught up (or --drain-max passed): a heartbeat still
        # queued is late, not lost; how late is the lag peak below.
        drain_from = time.monotonic()
        while time.monotonic() - drain_from < args.drain_max:
            try:
                behind = _group_lag(kafka, group, feedback.name, args.feedback_partitions)
            except Exception:  # a timeout: ask again
                behind = -1
            if behind == 0:
                break
            time.sleep(2.0)
        caught_up_s = time.monotonic() - drain_from
        print(f"ingests caught up {caught_up_s:.0f} s after the last heartbeat", flush=True)
        time.sleep(args.drain)  # the last pop-loads and statuses reach the reader
        stop.set()
        seen: Seen = out.get(timeout=120)
        reader.join(30)
    finally:
        for p in ingests + workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in ingests + workers:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(
            ["bash", str(CLUSTER / "up.sh")], check=False, timeout=600, stdout=subprocess.DEVNULL
        )  # fmt: skip  (the killed broker back)

    servers = [f"{p}-s{i:03d}" for p in pops for i in range(args.servers)]
    lost = 0
    for n, name in enumerate(servers):
        sent_here = sent // units + (1 if n < sent % units else 0)
        lost += seen.coverage.get(name, Coverage()).lost(sent_here)
    statuses_gap = {p: max((b - a for a, b in itertools.pairwise(ts)), default=0.0)
                    for p, ts in seen.statuses.items()}  # fmt: skip
    missing = sorted(p for p, g in statuses_gap.items() if g > WINDOW_S)
    no_status = sorted(set(pops) - set(seen.statuses))
    kills = sorted(killed_at.values())
    until = {what: next((k for k in kills if k > at), at + 40.0) for what, at in killed_at.items()}

    def silence(times: dict[str, list[float]], what: str) -> float:
        return longest_silence(times, killed_at[what], until[what] - killed_at[what])

    rebalance = {
        "broker": max(silence(seen.loads, "broker"), silence(seen.statuses, "broker")),
        "ingest": silence(seen.loads, "ingest"),
        "analytics": silence(seen.statuses, "analytics"),
    }
    peak = max((n for _, n in seen.lag), default=0)
    print(f"pop-loads read: {sum(map(len, seen.loads.values())):,}; pop-statuses read: "
          f"{sum(map(len, seen.statuses.values())):,} ({len(seen.statuses)} PoPs)")  # fmt: skip
    for what, s in rebalance.items():
        print(f"longest silence of a PoP across the {what} kill: {s:.1f} s")
    print(f"pop-statuses missing for more than one window ({WINDOW_S:g} s): {len(missing)} PoPs "
          f"{missing[:10]}; never a status: {len(no_status)}")  # fmt: skip
    print(f"ingest group lag peak: {peak:,} messages ({peak / units:.1f} s of heartbeats)")
    print(f"wrongly flagged: {len(seen.dead)} PoPs dead {sorted(seen.dead)[:10]}, "
          f"{len(seen.servers_down)} PoPs with a server marked down "
          f"{sorted(seen.servers_down)[:10]}")  # fmt: skip
    print(f"cluster_lost_heartbeats: {lost}")
    print(f"cluster_rebalance_s: {max(rebalance['ingest'], rebalance['analytics']):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
