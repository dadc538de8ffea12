"""The ingest adapter on the in-memory bus: feedback in, dead letters and pop-load.v1 out."""

from __future__ import annotations

import pytest

from popshift import topics as t
from popshift.bus import MemoryBus
from schemas.messages import PopLoad
from services.feedback_ingest.ingest import Ingest
from services.feedback_ingest.settings import IngestSettings
from tests.feedback.test_aggregate import hb


def ingest_on(bus: MemoryBus, clock: list[float]) -> Ingest:
    settings = IngestSettings(heartbeat_interval_s=1.0, missed_heartbeats=3)
    return Ingest(settings, ["a", "b"], bus, clock=lambda: clock[0])


def test_valid_feedback_is_published_per_pop_and_bad_feedback_dead_lettered() -> None:
    bus, clock = MemoryBus(), [10.0]
    ingest = ingest_on(bus, clock)
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=2.0))
    producer.send(t.FEEDBACK, "b", hb("b1", seq=1, busy=1.0, pop="b"))
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=3.0))  # duplicate: dropped, counted
    producer.send(t.FEEDBACK, "z", hb("z1", seq=1, pop="z"))  # unknown PoP: dead-lettered
    producer.send_raw(t.FEEDBACK.name, "a", b'{"kind":"server"}', [])  # invalid
    assert ingest.consumer.poll_batch(ingest.handle) == 5
    assert ingest.publish(clock[0]) == 2

    loads: list[PopLoad] = bus.replay(t.POP_LOAD)
    assert {x.pop: x.combined_load_cores for x in loads} == {"a": 2.0, "b": 1.0}
    assert [r.key for r in bus.logs[t.POP_LOAD.name]] == [b"a", b"b"]
    reasons = [x.reason for x in bus.dead_letters(t.FEEDBACK)]
    assert reasons[0] == "unknown pop: z"
    assert reasons[1].startswith("invalid: ")
    stats = ingest.stats()
    assert (stats["accepted"], stats["duplicates"], stats["dead_lettered"]) == (2, 1, 2)
    assert stats["published"] == 2


@pytest.mark.parametrize("interval_s", [None, 5.0])
def test_liveness_follows_the_interval_the_heartbeat_carries(interval_s: float | None) -> None:
    """No setting to match by hand: an agent beating every 5 s is down after 3 x 5 s."""
    bus, clock = MemoryBus(), [0.0]
    ingest = ingest_on(bus, clock)
    bus.producer().send(t.FEEDBACK, "a", hb("a1", seq=1, interval_s=interval_s))
    ingest.consumer.poll_batch(ingest.handle)
    down_after = 3 * (interval_s or 1.0)
    ingest.publish(down_after)
    ingest.publish(down_after + 0.01)
    *_, before, after = bus.replay(t.POP_LOAD)
    assert (before.servers[0].healthy, after.servers[0].healthy) == (True, False)
