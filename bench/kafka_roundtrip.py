"""Produce -> consume throughput and latency of feedback messages through the real local Kafka.

Run: ``python bench/kafka_roundtrip.py [--messages N]`` with Kafka up (``make up``).
Prints messages/s and latency p50/p99; last line ``kafka_roundtrip_msgs_per_s: N``.
Latency is from just before ``produce`` to the consumer handing the validated model over.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import uuid

from popshift import topics
from popshift.bus import Received, TypedConsumer, TypedProducer, create_topics
from popshift.settings import Settings
from schemas.messages import ServerHeartbeat, ServiceQos


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings()
    topic = topics.Topic(
        f"bench-{uuid.uuid4().hex[:8]}.feedback.v1", "PoP", topics.FEEDBACK.adapter
    )
    create_topics(settings.kafka(), [topic], partitions=3)
    consumer = TypedConsumer(settings.kafka(), f"{topic.name}-g", [topic])
    latencies: list[float] = []

    def on_message(r: Received) -> None:
        latencies.append(time.time() - r.value.sent_at)

    done = threading.Event()

    def consume() -> None:
        while len(latencies) < args.messages and not done.is_set():
            consumer.poll_batch(on_message, timeout=0.2, max_messages=1000)

    reader = threading.Thread(target=consume)
    # Let the consumer join its group before timing starts.
    consumer.poll_batch(on_message, timeout=3.0)
    reader.start()
    producer = TypedProducer(settings.kafka())
    qos = ServiceQos(probes=10, success_rate=1.0, latency_p50_ms=1.0, latency_p95_ms=2.0)
    start = time.time()
    for i in range(args.messages):
        producer.send(
            topic,
            f"pop{i % 300}",
            ServerHeartbeat(
                pop=f"pop{i % 300}",
                server=f"s{i % 100}",
                address="192.0.2.1",
                seq=i,
                sent_at=time.time(),
                capacity_cores=32.0,
                cpu_busy_cores=12.5,
                qos=qos,
            ),
        )
    producer.flush()
    reader.join(timeout=120)
    done.set()
    elapsed = time.time() - start
    consumer.close()
    got = sorted(latencies)
    rate = len(got) / elapsed
    print(f"machine: {platform.node()} {platform.machine()} cores={os.cpu_count()}")
    print(f"messages: {len(got)}/{args.messages} in {elapsed:.2f}s")
    print(f"latency_p50_ms: {percentile(got, 0.50) * 1000:.1f}")
    print(f"latency_p99_ms: {percentile(got, 0.99) * 1000:.1f}")
    print(f"kafka_roundtrip_msgs_per_s: {rate:.0f}")


if __name__ == "__main__":
    main()
