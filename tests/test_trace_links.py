"""One trace from a heartbeat to a table write (popshift/tracing.py): each service that
aggregates sends its result in a span whose parent is the newest of what it was made of and
whose links are the others. On the in-memory bus with the in-memory span exporter; the sync's
map write is the notice's child the same way (tests/sync/test_service.py)."""

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


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _made_of(span: ReadableSpan) -> set[int]:
    """Its parent and its links."""
    return _linked(span) | ({p} if (p := _parent(span)) is not None else set())


def test_a_pop_load_goes_on_from_the_heartbeats_it_aggregates(spans: Any) -> None:
    bus, clock = MemoryBus(), [10.0]
    ingest = ingest_on(bus, clock)
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=2.0))
    producer.send(t.FEEDBACK, "a", hb("a2", seq=1, busy=1.0))
    producer.send(t.FEEDBACK, "b", hb("b1", seq=1, busy=1.0, pop="b"))
    ingest.consumer.poll_batch(ingest.handle)
    ingest.publish(clock[0])
    processed = _finished(spans, f"{t.FEEDBACK.name} process")
    heartbeats = {s.context.span_id: s for s in processed}
    sends = _finished(spans, f"{t.POP_LOAD.name} send")
    assert len(sends) == 2
    made_of = [_made_of(s) for s in sends]
    assert sorted(len(x) for x in made_of) == [1, 2]  # b's one heartbeat, a's two
    assert made_of[0] | made_of[1] == set(heartbeats)  # every heartbeat, by its PoP's load
    for send in sends:  # each in the trace of its newest heartbeat
        parent = heartbeats[_parent(send) or 0]
        assert send.context.trace_id == parent.context.trace_id
    a_send = next(s for s in sends if len(_made_of(s)) == 2)
    assert _parent(a_send) == processed[1].context.span_id  # a2's, a1's a link
    ingest.publish(clock[0] + 1.0)  # nothing new heard: the next pop-loads link nothing
    assert all(not _made_of(s) for s in _finished(spans, f"{t.POP_LOAD.name} send")[2:])


def test_a_policy_goes_on_from_the_statuses_it_was_decided_on(spans: Any) -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 9.0, "b": 2.0, "c": 2.0})
    service = engine_on(bus)
    service.consumer.poll_batch(service.handle)
    events = service.tick()
    processed = _finished(spans, f"{t.POP_STATUS.name} process")
    (send,) = [s for s in _finished(spans, f"{t.POLICIES.name} send")]
    assert events and events[0].source == "a"
    by_pop = {pop: processed[i].context.span_id for i, pop in enumerate(("a", "b", "c"))}
    assert _parent(send) == by_pop["a"]  # the source's status: the trace goes on from it
    assert _linked(send) == {by_pop[s.destination] for s in events[0].shares}


def test_a_table_write_goes_on_from_its_policy_and_the_notice_from_the_write(spans: Any) -> None:
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
    assert _parent(write) == process.context.span_id and not write.links
    (notice,) = _finished(spans, f"{t.TABLE_UPDATES.name} send")
    assert _parent(notice) == write.context.span_id
    assert notice.context.trace_id == process.context.trace_id
