"""Feedback throughput and lag: simulated agents -> real Kafka -> ingest -> analytics (faust).

Drives ``--pops`` x ``--servers`` heartbeats at ``--rate`` messages/s (default 300 x 100 at 1 Hz
= 30,000/s) through the real services, started as processes exactly as the lab starts them, on
private topics of the local broker. Measures over ``--duration`` seconds after a warm-up:

- sustained rate: feedback records the ingest consumer group committed per second (it commits
  only what it handled), capped by what was offered;
- end-to-end lag: for every heartbeat reflected in a pop-load.v1 that analytics turned into a
  pop-status.v1, status received by the bench minus the heartbeat's ``sent_at``
  (sampled on ``--lag-pops`` PoPs to keep the bench's own CPU out of the way).

``--mode pop`` sends the same servers as per-PoP aggregated feedback (patent (42): one message
per PoP per second from its management server); its rate is reported in server entries/s.
``--profile DIR`` runs the ingest and analytics under cProfile and prints where their time goes.

    python bench/feedback_pipeline.py [--rate 30000] [--duration 20] [--mode server|pop]

The last line is ``feedback_msgs_per_s: N`` (per-server feedback sustained with p99 lag < 2 s;
0 if the lag bound was not met at the offered rate).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from popshift import topics  # noqa: E402
from popshift.bus import create_topics  # noqa: E402
from popshift.credentials import KafkaAccess  # noqa: E402
from popshift.settings import Settings  # noqa: E402

LAG_BOUND_S = 2.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--bootstrap", default=os.environ.get("POPSHIFT_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    p.add_argument("--pops", type=int, default=300)
    p.add_argument("--servers", type=int, default=100, help="servers per PoP")
    p.add_argument("--rate", type=float, default=30_000.0, help="server messages/s offered")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--ingest-procs", type=int, default=1)
    p.add_argument("--mode", choices=["server", "pop"], default="server")
    p.add_argument("--lag-pops", type=int, default=20)
    p.add_argument(
        "--profile", type=Path, default=None, help="cProfile the ingest and analytics into DIR"
    )
    return p.parse_args()


def network_yaml(path: Path, pops: int) -> list[str]:
    names = [f"p{i:03d}" for i in range(pops)]
    doc = {
        "pops": [
            {
                "name": n,
                "id": i + 1,
                "ingress": f"10.{200 + i // 250}.{i % 250}.1",
                "server_prefixes": [f"10.{i // 250}.{i % 250}.0/24"],  # as Offered addresses them
                "max_server_cores": 8.0,
            }
            for i, n in enumerate(names)
        ],
        "tiers": [{"id": 0, "name": "bulk"}],
    }
    path.write_text(yaml.safe_dump(doc))
    return names


class Offered:
    """Pre-rendered feedback bytes; only seq, sent_at and the load change per message."""

    def __init__(self, pops: list[str], servers: int, mode: str) -> None:
        self.mode = mode
        self.keys = [p.encode() for p in pops]
        self.server_tpl: list[tuple[bytes, str]] = []
        for pi, pop in enumerate(pops):
            for si in range(servers):
                head = (
                    f'{{"schema_version":1,"kind":"server","pop":"{pop}","server":"{pop}-s{si:03d}",'
                    f'"address":"10.{pi // 250}.{pi % 250}.{si + 1}",'
                )
                self.server_tpl.append(
                    (
                        pop.encode(),
                        head + '"seq":%d,"sent_at":%.4f,'
                        '"capacity_cores":8.0,"cpu_busy_cores":%.3f}',
                    )
                )
        self.pop_entries = {
            pop: [
                f'{{"server":"{pop}-s{si:03d}","address":"10.{pi // 250}.{pi % 250}.{si + 1}",'
                '"capacity_cores":8.0,"utilisation":%.3f,"last_seen":%.4f}'
                for si in range(servers)
            ]
            for pi, pop in enumerate(pops)
        }
        self.servers = servers

    def server_message(self, i: int, seq: int, now: float) -> tuple[bytes, bytes]:
        key, tpl = self.server_tpl[i % len(self.server_tpl)]
        busy = 8.0 * (0.3 + 0.6 * ((i * 7919 + seq) % 100) / 100)
        return key, (tpl % (seq, now, busy)).encode()

    def pop_message(self, i: int, seq: int, now: float) -> tuple[bytes, bytes]:
        key = self.keys[i % len(self.keys)]
        pop = key.decode()
        entries = ",".join(
            e % (0.3 + 0.6 * ((j * 7919 + seq) % 100) / 100, now)
            for j, e in enumerate(self.pop_entries[pop])
        )
        body = (
            f'{{"schema_version":1,"kind":"pop","pop":"{pop}","seq":{seq},"sent_at":{now:.4f},'
            f'"servers":[{entries}]}}'
        )
        return key, body.encode()


Make = Callable[[int, int, float], tuple[bytes, bytes]]
"""Message i of round r (its seq) at wall time t -> (key, value)."""


def offer(producer: Producer, topic: str, make: Make, sent: int, due: int, units: int) -> int:
    """Send messages ``sent`` up to ``due`` (message i is round i // units + 1, one per
    server per round), waiting on a full client queue; returns how many are sent in all."""
    wall = time.time()
    for i in range(sent, max(sent, due)):
        key, value = make(i, i // units + 1, wall)
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
    producer.poll(0)
    return max(sent, due)


def start(module: str, env: dict[str, str], profile: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", module]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stderr=subprocess.DEVNULL)


def committed(kafka: KafkaAccess, group: str, topic: str, partitions: int) -> int:
    c = Consumer({**kafka.config(), "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        c.close()


class LagProbe:
    """Reads pop-load and pop-status of a few PoPs; pairs them into end-to-end lag samples.

    Runs in its own process (``probe_main``) so that the bench's producer loop does not delay
    the receive times it measures.
    """

    def __init__(
        self, kafka: KafkaAccess, load_topic: str, status_topic: str, pops: set[bytes]
    ) -> None:
        self.c = Consumer(
            {
                **kafka.config(),
                "group.id": f"bench-lag-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        self.c.subscribe([load_topic, status_topic])
        self.load_topic = load_topic
        self.pops = pops
        self.prev_seen: dict[tuple[str, str], float] = {}
        self.fresh: dict[tuple[str, float], list[float]] = {}  # (pop, at) -> heartbeat sent_at
        self.status_seen: dict[tuple[str, float], float] = {}  # (pop, at) -> received
        self.samples: list[float] = []
        self.load_lag: list[float] = []  # heartbeat sent -> pop-load received
        self.status_lag: list[float] = []  # pop-load at -> pop-status received
        self.statuses = 0
        self.recording = False

    def _pair(self, key: tuple[str, float], received: float) -> None:
        sent = self.fresh.pop(key, [])
        if self.recording:
            self.samples.extend(received - s for s in sent)
            self.status_lag.append(received - key[1])

    def poll(self, timeout: float) -> None:
        msgs = self.c.consume(500, timeout=timeout)
        now = time.time()
        for m in msgs:
            if m.error() is not None or m.key() not in self.pops:
                continue
            doc = json.loads(m.value() or b"{}")
            key = (doc["pop"], doc["at"])
            if m.topic() == self.load_topic:
                fresh = []
                for s in doc["servers"]:
                    k = (doc["pop"], s["server"])
                    if s["last_seen"] != self.prev_seen.get(k):
                        self.prev_seen[k] = s["last_seen"]
                        fresh.append(s["last_seen"])
                self.fresh[key] = fresh
                if self.recording:
                    self.load_lag.extend(now - s for s in fresh)
                if key in self.status_seen:  # the status was read first
                    self._pair(key, self.status_seen.pop(key))
            else:
                self.statuses += 1
                if key in self.fresh:
                    self._pair(key, now)
                else:
                    self.status_seen[key] = now


def probe_main(
    args: tuple[KafkaAccess, str, str, set[bytes]], record: Any, stop: Any, out: Any
) -> None:
    probe = LagProbe(*args)
    while not stop.is_set():
        probe.recording = record.is_set()
        probe.poll(0.1)
    out.put((probe.samples, probe.load_lag, probe.status_lag, probe.statuses))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    args = parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="popshift-bench-"))
    pops = network_yaml(tmp / "network.yaml", args.pops)
    (tmp / "analytics.yaml").write_text(
        yaml.safe_dump({"defaults": {"window_s": 5.0, "refresh_s": 0.001}})
    )
    # The benchmark makes its own topics and groups: it and its services log in as the admin.
    names = Settings(topic_prefix=prefix, kafka_bootstrap=args.bootstrap, principal="admin")
    kafka = names.kafka()
    feedback, pop_load, pop_status = (
        names.topic(t) for t in (topics.FEEDBACK, topics.POP_LOAD, topics.POP_STATUS)
    )
    create_topics(kafka, [feedback], args.partitions)
    create_topics(kafka, [pop_load, pop_status], 2)
    env = {
        "POPSHIFT_KAFKA_BOOTSTRAP": args.bootstrap,
        "POPSHIFT_PRINCIPAL": "admin",
        "POPSHIFT_TOPIC_PREFIX": prefix,
        "POPSHIFT_NETWORK_FILE": str(tmp / "network.yaml"),
        "POPSHIFT_INGEST_GROUP": f"{prefix}-ingest",
        "POPSHIFT_ANALYTICS_APP_ID": f"{prefix}-analytics",
        "POPSHIFT_ANALYTICS_CONFIG": str(tmp / "analytics.yaml"),
        "POPSHIFT_ANALYTICS_DATADIR": str(tmp / "faust"),
        "POPSHIFT_TOPIC_PARTITIONS": "2",
    }
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    procs = [
        start(
            "services.feedback_ingest.ingest",
            env,
            args.profile / f"ingest{i}.prof" if args.profile else None,
        )
        for i in range(args.ingest_procs)
    ]
    procs.append(
        start(
            "services.analytics.app", env, args.profile / "analytics.prof" if args.profile else None
        )
    )
    ctx = multiprocessing.get_context("spawn")
    record, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    lag_pops = {p.encode() for p in pops[: args.lag_pops]}
    prober = ctx.Process(
        target=probe_main,
        args=((kafka, pop_load.name, pop_status.name, lag_pops), record, stop, out),
    )
    prober.start()
    producer = Producer(
        {
            **kafka.config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    offered = Offered(pops, args.servers, args.mode)
    n_servers = args.pops * args.servers
    per_msg = 1 if args.mode == "server" else args.servers
    msg_rate = args.rate / per_msg
    units = n_servers if args.mode == "server" else args.pops
    make = offered.server_message if args.mode == "server" else offered.pop_message
    print(
        f"bench: {args.pops} PoPs x {args.servers} servers, mode={args.mode}, "
        f"offered {args.rate:,.0f} server msgs/s ({msg_rate:,.0f} Kafka records/s), "
        f"{args.ingest_procs} ingest process(es), {args.partitions} feedback partitions",
        flush=True,
    )
    try:
        t0 = time.monotonic()
        sent = 0
        measure_from = t0 + args.warmup
        measure_to = measure_from + args.duration
        c0 = sent0 = 0
        tm0 = 0.0
        while True:
            now_m = time.monotonic()
            if now_m >= measure_to:
                break
            if not record.is_set() and now_m >= measure_from:
                record.set()
                c0 = committed(kafka, env["POPSHIFT_INGEST_GROUP"], feedback.name, args.partitions)
                sent0, tm0 = sent, time.monotonic()
            sent = offer(producer, feedback.name, make, sent, int((now_m - t0) * msg_rate), units)
            time.sleep(0.002)
        tm1 = time.monotonic()
        c1 = committed(kafka, env["POPSHIFT_INGEST_GROUP"], feedback.name, args.partitions)
        producer.flush(30)
        time.sleep(LAG_BOUND_S + 1.0)  # statuses for the window's last heartbeats; later = over
        record.clear()
        stop.set()
        samples, load_lag, status_lag, statuses = out.get(timeout=60)
        prober.join(30)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    span = tm1 - tm0
    offered_rate = (sent - sent0) / span * per_msg
    processed_rate = (c1 - c0) / span * per_msg
    sustained = min(offered_rate, processed_rate)
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"offered:   {offered_rate:,.0f} server msgs/s over {span:.1f}s")
    print(f"processed: {processed_rate:,.0f} server msgs/s (ingest committed offsets)")
    print(
        f"lag (heartbeat sent -> pop-status received): p50 {p50:.3f}s p99 {p99:.3f}s "
        f"over {len(samples)} heartbeats of {args.lag_pops} PoPs, {statuses} statuses"
    )
    print(
        f"  of which heartbeat -> pop-load p50 {pct(load_lag, 0.5):.3f}s "
        f"p99 {pct(load_lag, 0.99):.3f}s; pop-load -> pop-status p50 "
        f"{pct(status_lag, 0.5):.3f}s p99 {pct(status_lag, 0.99):.3f}s"
    )
    if args.profile:
        for f in sorted(args.profile.glob("*.prof")):
            print(f"--- profile {f} (top 25 by own time) ---")
            pstats.Stats(str(f), stream=sys.stdout).sort_stats("tottime").print_stats(25)
    ok = p99 < LAG_BOUND_S and processed_rate >= 0.98 * offered_rate
    result = int(sustained) if ok else 0
    if not ok:
        print(
            f"lag bound NOT met at {offered_rate:,.0f}/s (p99 {p99:.2f}s, processed "
            f"{processed_rate:,.0f}/s): try a lower --rate to find the sustained rate"
        )
    label = (
        "feedback_msgs_per_s" if args.mode == "server" else "feedback_pop_path_server_entries_per_s"
    )
    print(f"{label}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
