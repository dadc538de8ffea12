"""The in-memory bus that service unit tests run on, and the producer's failure reporting."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from confluent_kafka import KafkaError

from popshift import topics as t
from popshift.bus import DeliveryFailed, MemoryBus, Received, RejectMessage, TypedProducer
from popshift.credentials import KafkaAccess
from tests.samples import HEARTBEAT, POP_FEEDBACK


def test_typed_messages_flow_in_order_and_a_group_resumes_at_its_offset() -> None:
    bus = MemoryBus()
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", HEARTBEAT)
    producer.send(t.FEEDBACK, "a", POP_FEEDBACK)
    got: list[Received] = []
    first = bus.consumer("g", [t.FEEDBACK])
    assert first.poll_batch(got.append, max_messages=1) == 1
    again = bus.consumer("g", [t.FEEDBACK])  # same group: goes on where the first stopped
    assert again.poll_batch(got.append) == 1
    assert [r.value for r in got] == [HEARTBEAT, POP_FEEDBACK]
    assert [(r.offset, r.key) for r in got] == [(0, b"a"), (1, b"a")]
    other: list[Received] = []
    assert bus.consumer("other", [t.FEEDBACK]).poll_batch(other.append) == 2
    assert producer.delivered == 2


def test_bad_and_rejected_messages_are_dead_lettered_with_the_reason() -> None:
    bus = MemoryBus()
    producer = bus.producer()
    producer.send_raw(t.FEEDBACK.name, "a", b"{not json", [])
    producer.send_raw(t.FEEDBACK.name, "a", b"x" * 2000, [])
    producer.send(t.FEEDBACK, "a", HEARTBEAT)

    def refuse(_: Received) -> None:
        raise RejectMessage("unknown pop: a")

    consumer = bus.consumer("g", [t.FEEDBACK], max_message_bytes=1000)
    assert consumer.poll_batch(refuse) == 3
    letters = bus.dead_letters(t.FEEDBACK)
    assert [x.reason.split(":")[0] for x in letters] == ["invalid", "oversized", "unknown pop"]
    assert [x.offset for x in letters] == [0, 1, 2]
    assert base64.b64decode(letters[0].payload_b64) == b"{not json"
    assert consumer.stats.dead_lettered == 3 and consumer.stats.handled == 0


def test_a_handler_that_raises_leaves_its_message_for_the_next_poll() -> None:
    bus = MemoryBus()
    bus.producer().send(t.FEEDBACK, "a", HEARTBEAT)
    consumer = bus.consumer("g", [t.FEEDBACK])

    def crash(_: Received) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        consumer.poll_batch(crash)
    got: list[Received] = []
    assert consumer.poll_batch(got.append) == 1
    assert got[0].value == HEARTBEAT


def test_replay_reads_a_topic_whole_or_one_key_and_skips_invalid() -> None:
    bus = MemoryBus()
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", HEARTBEAT)
    producer.send_raw(t.FEEDBACK.name, "a", b"junk", [])
    producer.send(t.FEEDBACK, "b", POP_FEEDBACK)
    assert bus.replay(t.FEEDBACK) == [HEARTBEAT, POP_FEEDBACK]
    assert bus.replay(t.FEEDBACK, key="b") == [POP_FEEDBACK]
    assert bus.replay(t.POLICIES) == []


def test_a_failed_delivery_fails_one_flush_not_every_later_one(kafka: KafkaAccess) -> None:
    nowhere = dataclasses.replace(kafka, bootstrap="127.0.0.1:9")  # nothing listens there
    producer = TypedProducer(nowhere, {"log_level": 0})
    producer._on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
    with pytest.raises(DeliveryFailed, match="1 deliveries failed"):
        producer.flush(0.1)
    producer.flush(0.1)  # reported once; nothing new failed since
    producer._on_delivery(None, None)
    assert (producer.delivered, producer.failed) == (1, 1)  # the counts stay
