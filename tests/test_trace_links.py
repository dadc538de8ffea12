"""One chain of spans and links from a heartbeat to a table write (popshift/tracing.py): each
service that aggregates links, in the span that sends its result, the spans of what it was made
of. On the in-memory bus with the in-memory span exporter; the sync's map write links the
table-updates notice the same way (services/forwarder/sync.py)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from popshift import topics as t
from popshift.bus import MemoryBus
from tests.feedback.test_aggregate import hb
from tests.feedback.test_ingest import ingest_on
from tests.policy.test_service import NOW, engine_on, send_loads
from tests.table.test_redis_kafka import pop_load
from tests.table.test_writer_service import MemoryTables, policy, writer_on


def _finished(spans: Any, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def _linked(span: ReadableSpan) -> set[int]:
    return {link.context.span_id for link in span.links}


def test_a_pop_load_links_the_heartbeats_it_aggregates(spans: Any) -> None:
    bus, clock = MemoryBus(), [10.0]
    ingest = ingest_on(bus, clock)
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=2.0))
    producer.send(t.FEEDBACK, "a", hb("a2", seq=1, busy=1.0))
    producer.send(t.FEEDBACK, "b", hb("b1", seq=1, busy=1.0, pop="b"))
    ingest.consumer.poll_batch(ingest.handle)
    ingest.publish(clock[0])
    heartbeats = {s.context.span_id for s in _finished(spans, f"{t.FEEDBACK.name} process")}
    sends = _finished(spans, f"{t.POP_LOAD.name} send")
    assert len(sends) == 2
    links = [_linked(s) for s in sends]
    assert sorted(len(x) for x in links) == [1, 2]  # b's one heartbeat, a's two
    assert links[0] | links[1] == heartbeats  # every heartbeat linked, by its PoP's load
    ingest.publish(clock[0] + 1.0)  # nothing new heard: the next pop-loads link nothing
    assert all(not s.links for s in _finished(spans, f"{t.POP_LOAD.name} send")[2:])


def test_a_policy_links_the_statuses_it_was_decided_on(spans: Any) -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 9.0, "b": 2.0, "c": 2.0})
    service = engine_on(bus)
    service.consumer.poll_batch(service.handle)
    events = service.tick()
    status_spans = {s.context.span_id for s in _finished(spans, f"{t.POP_STATUS.name} process")}
    (send,) = [s for s in _finished(spans, f"{t.POLICIES.name} send")]
    assert events and events[0].source == "a"
    wanted = 1 + len(events[0].shares)  # the source's status and each destination's
    assert len(_linked(send)) == wanted and _linked(send) <= status_spans


def test_a_table_write_links_its_policy_and_the_notice_links_the_write(spans: Any) -> None:
    bus, store = MemoryBus(), MemoryTables()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load("a", NOW))
    writer = writer_on(bus, store)
    writer.consumer.poll_batch(writer.handle)
    spans.clear()
    producer.send(t.POLICIES, "a", policy("a", 2, {"b": 0.25}))
    writer.consumer.poll_batch(writer.handle)
    (process,) = _finished(spans, f"{t.POLICIES.name} process")
    (write,) = _finished(spans, "table write a t0")
    assert _linked(write) == {process.context.span_id}
    (notice,) = _finished(spans, f"{t.TABLE_UPDATES.name} send")
    assert _linked(notice) == {write.context.span_id}
