"""Read a compacted topic from its beginning to its end: how a restarted service gets its state.

policies.v1 is compacted by source PoP, so reading it whole is cheap and yields every source's
latest policy. Used by the engine (versions and current shares), the table writer (its own PoP's
policy) and ``popshift policy show``.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from popshift.credentials import KafkaAccess
from popshift.topics import Topic

log = logging.getLogger(__name__)

# A topic created a moment ago may not have its partition leaders yet: ask again.
_NOT_YET = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TIMED_OUT}
)


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                tp, timeout=max(0.1, deadline - time.monotonic())
            )
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in _NOT_YET or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def read_all(
    kafka: KafkaAccess,
    topic: Topic,
    key: str | None = None,
    timeout_s: float = 30.0,
    since_s: float | None = None,
) -> list[Any]:
    """Every valid message of ``topic`` (only ``key``'s if given; only those of the last
    ``since_s`` seconds if given), oldest first.

    Invalid payloads are skipped with a warning: the live consumer already dead-lettered them.
    """
    consumer = Consumer(
        {
            **kafka.config(),
            "group.id": f"popshift-replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    out: list[Any] = []
    try:
        meta = consumer.list_topics(topic.name, timeout=timeout_s).topics.get(topic.name)
        if meta is None or meta.error is not None:
            return []
        ends: dict[int, int] = {}
        marks_deadline = time.monotonic() + timeout_s
        for p in meta.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic.name, p), marks_deadline)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        start = [TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in ends]
        if since_s is not None:
            since_ms = int((time.time() - since_s) * 1000)
            found = consumer.offsets_for_times(
                [TopicPartition(topic.name, p, since_ms) for p in ends], timeout=timeout_s
            )
            start = [tp for tp in found if 0 <= tp.offset < ends[tp.partition]]
            ends = {tp.partition: ends[tp.partition] for tp in start}
            if not ends:
                return []
        consumer.assign(start)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
            if key is not None and msg.key() != key.encode():
                continue
            try:
                out.append(topic.adapter.validate_json(msg.value() or b""))
            except ValidationError as exc:
                log.warning("replay %s@%d: skipped invalid message: %s", topic.name, offset, exc)
        if ends:
            raise TimeoutError(f"replay of {topic.name} did not reach the end in {timeout_s}s")
    finally:
        consumer.close()
    return out
