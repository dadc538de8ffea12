"""The ingest against the real broker: bad feedback is dead-lettered, the valid stream is intact."""

from __future__ import annotations

import base64
import time

import pytest
from pydantic import TypeAdapter

from popshift import topics as t
from popshift.bus import KafkaBus, TypedProducer, create_topics
from popshift.credentials import KafkaAccess
from schemas.messages import DeadLetter, PopLoad
from services.feedback_ingest.ingest import Ingest
from services.feedback_ingest.settings import IngestSettings
from tests.conftest import NETWORK
from tests.feedback.helpers import TopicReader
from tests.feedback.test_aggregate import hb

pytestmark = pytest.mark.kafka

GOOD = hb("a1", seq=1, busy=2.0).model_dump_json()


def _bad(old: str, new: str) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new).encode()


BAD: dict[str, tuple[bytes, str]] = {
    "nan": (_bad('"cpu_busy_cores":2.0', '"cpu_busy_cores":NaN'), "cpu_busy_cores"),
    "negative": (_bad('"cpu_busy_cores":2.0', '"cpu_busy_cores":-1.0'), "cpu_busy_cores"),
    "over_capacity": (_bad('"cpu_busy_cores":2.0', '"cpu_busy_cores":40.0'), "exceeds capacity"),
    "unknown_pop": (_bad('"pop":"a"', '"pop":"zzz"'), "unknown pop: zzz"),
    "oversized": (b'{"pad":"' + b"x" * 9000 + b'"}', "oversized"),
    "wrong_version": (_bad('"schema_version":1', '"schema_version":2'), "schema_version"),
    "not_json": (b"\x00\x01 definitely not json", "invalid"),
}


def test_bad_feedback_is_dead_lettered_with_its_reason_and_the_rest_flows(
    kafka: KafkaAccess, unique: str
) -> None:
    settings = IngestSettings(
        kafka=kafka,
        topic_prefix=unique,
        ingest_group=f"{unique}-ingest",
        max_message_bytes=8192,
        ingest_warmup_s=0.0,  # tests/feedback/test_ingest.py checks the warm-up
    )
    clock = [1000.0]
    create_topics(kafka, [settings.topic(t.FEEDBACK), settings.topic(t.POP_LOAD)], partitions=2)
    ingest = Ingest(settings, NETWORK, KafkaBus(kafka), clock=lambda: clock[0])
    producer = TypedProducer(kafka)
    valid = 0
    for seq in range(1, 21):
        for server, pop in (("a1", "a"), ("a2", "a"), ("b1", "b")):
            busy = 1.0 + seq / 10 if server == "a1" else 2.0
            producer.send(ingest.feedback, pop, hb(server, seq=seq, busy=busy, pop=pop))
            valid += 1
        if seq <= len(BAD):
            payload, _ = list(BAD.values())[seq - 1]
            producer.send_raw(ingest.feedback.name, "a", payload, [])
    producer.send(ingest.feedback, "a", hb("a1", seq=20, busy=3.9))  # a duplicate: dropped
    producer.flush()
    sent = valid + len(BAD) + 1

    end = time.monotonic() + 30
    while ingest.consumer.stats.handled + ingest.consumer.stats.dead_lettered < sent:
        assert time.monotonic() < end, ingest.stats()
        ingest.consumer.poll_batch(ingest.handle, timeout=0.5)
    assert ingest.publish(clock[0]) == 2
    ingest.close()

    stats = ingest.stats()
    assert stats["dead_lettered"] == len(BAD)
    assert stats["duplicates"] == 1
    assert stats["out_of_order"] == 0
    # nothing silently lost: every record is accounted for
    assert stats["accepted"] + stats["duplicates"] + stats["dead_lettered"] == sent
    assert ingest.consumer.stats.reasons["unknown pop"] == 1

    letters = TopicReader(kafka, _dlq(ingest), f"{unique}-dlq")
    try:
        got = letters.wait_for(lambda ms: len(ms) >= len(BAD) and ms, 30, "dead letters")
    finally:
        letters.close()
    by_payload = {base64.b64decode(r.value.payload_b64): r.value for r in got}
    for label, (payload, reason) in BAD.items():
        letter: DeadLetter = by_payload[payload]
        assert reason in letter.reason, (label, letter.reason)
        assert letter.source_topic == ingest.feedback.name

    loads = TopicReader(kafka, ingest.pop_load, f"{unique}-loads")
    try:
        msgs = loads.wait_for(lambda ms: len(ms) >= 2 and ms, 30, "pop loads")
    finally:
        loads.close()
    by_pop: dict[str, PopLoad] = {r.value.pop: r.value for r in msgs}
    assert [(s.server, s.utilisation) for s in by_pop["a"].servers] == [("a1", 0.75), ("a2", 0.5)]
    assert by_pop["a"].combined_load_cores == pytest.approx(5.0)
    assert by_pop["b"].healthy_capacity_cores == 4.0
    assert {r.key for r in msgs} == {b"a", b"b"}


def _dlq(ingest: Ingest) -> t.Topic:
    """The dead-letter topic, read with the DeadLetter schema."""
    return t.Topic(ingest.feedback.dead_letter, "PoP name", TypeAdapter(DeadLetter))
