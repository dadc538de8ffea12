"""The ingest adapter on the in-memory bus: feedback in, dead letters and pop-load.v1 out."""

from __future__ import annotations

import pytest

from popshift import topics as t
from popshift.bus import MemoryBus, Received
from schemas.messages import PopLoad
from services.feedback_ingest.ingest import Ingest
from services.feedback_ingest.settings import IngestSettings
from tests.conftest import NETWORK
from tests.feedback.test_aggregate import hb


def ingest_on(bus: MemoryBus, clock: list[float], warmup_s: float = 0.0) -> Ingest:
    settings = IngestSettings(
        heartbeat_interval_s=1.0, missed_heartbeats=3, ingest_warmup_s=warmup_s
    )
    return Ingest(settings, NETWORK, bus, clock=lambda: clock[0])


def on_bus(start: float = 10.0, warmup_s: float = 0.0) -> tuple[list[float], MemoryBus, Ingest]:
    """A fake clock, a bus that stamps records with it (as a broker would), an ingest on both."""
    clock = [start]
    bus = MemoryBus(clock=lambda: clock[0])
    return clock, bus, ingest_on(bus, clock, warmup_s)


def test_feedback_is_committed_only_once_a_pop_load_counts_it() -> None:
    """An ingest that dies between reading and reporting leaves the heartbeats to the next."""
    clock = [10.0]
    bus = MemoryBus(clock=lambda: clock[0])  # stamps records as a broker would
    producer = bus.producer()
    for seq in (1, 2):
        producer.send(t.FEEDBACK, "a", hb("a1", seq=seq, busy=2.0))
    first = ingest_on(bus, clock)
    assert first.consumer.poll_batch(first.handle) == 2
    # killed before its publish: a new ingest of the group reads both again
    second = ingest_on(bus, clock)
    assert second.consumer.poll_batch(second.handle) == 2
    assert second.publish(clock[0]) == 1
    (load,) = bus.replay(t.POP_LOAD)
    (server,) = load.servers
    assert (server.seq_first, server.seq_last, server.heartbeats) == (1, 2, 2)
    producer.send(t.FEEDBACK, "a", hb("a1", seq=3, busy=2.0))
    third = ingest_on(bus, clock)  # after the publish, only the new one is left to read
    assert third.consumer.poll_batch(third.handle) == 1


def test_a_pop_taken_over_is_reported_only_once_its_servers_were_heard() -> None:
    """After a rebalance the new owner has heard one server of a's two: a pop-load now would
    show half of a gone; the warm-up (one heartbeat interval) waits for the other."""
    clock, bus, ingest = on_bus(warmup_s=1.0)
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=2.0))
    ingest.consumer.poll_batch(ingest.handle)
    assert ingest.publish(10.5) == 0
    clock[0] = 10.6
    producer.send(t.FEEDBACK, "a", hb("a2", seq=1, busy=1.0))
    ingest.consumer.poll_batch(ingest.handle)
    assert ingest.publish(11.0) == 1
    (load,) = bus.replay(t.POP_LOAD)
    assert [s.server for s in load.servers] == ["a1", "a2"]


def test_a_revoked_partition_is_reported_then_forgotten() -> None:
    clock, bus, ingest = on_bus()
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, busy=2.0))
    producer.send(t.FEEDBACK, "b", hb("b1", seq=1, busy=1.0, pop="b"))
    ingest.consumer.poll_batch(ingest.handle)
    ingest._revoked([(t.FEEDBACK.name, 0)])  # the in-memory bus has one partition: both go
    assert {x.pop for x in bus.replay(t.POP_LOAD)} == {"a", "b"}  # their last word
    assert ingest.stats()["handed_over"] == 2
    clock[0] = 20.0  # long past K intervals: nothing left here to mark down
    assert ingest.publish(clock[0]) == 0


def test_valid_feedback_is_published_per_pop_and_bad_feedback_dead_lettered() -> None:
    clock, bus, ingest = on_bus()
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
    """No setting to match by hand: an agent beating every 5 s is down after 3 x 5 s (while
    another server keeps reporting, so the bus is known to work)."""
    clock, bus, ingest = on_bus(0.0)
    step = interval_s or 1.0
    down_after = 3 * step
    producer = bus.producer()
    producer.send(t.FEEDBACK, "a", hb("a1", seq=1, interval_s=interval_s))
    for i in range(4):
        clock[0] = i * step
        producer.send(t.FEEDBACK, "a", hb("a2", seq=i + 1, interval_s=interval_s))
        ingest.consumer.poll_batch(ingest.handle)
    ingest.publish(down_after)
    ingest.publish(down_after + 0.01)
    *_, before, after = bus.replay(t.POP_LOAD)
    healthy = [{s.server: s.healthy for s in x.servers} for x in (before, after)]
    assert healthy == [{"a1": True, "a2": True}, {"a1": False, "a2": True}]


def test_a_bus_outage_marks_no_server_down_and_publishes_no_capacity_zero() -> None:
    """No feedback from anyone for K intervals: a bus outage. Nothing is published meanwhile,
    no server ages, and after the outage the loads come back as they were, with fresh times."""
    clock, bus, ingest = on_bus(100.0)
    producer = bus.producer()
    for seq in (1, 2):
        producer.send(t.FEEDBACK, "a", hb("a1", seq=seq, busy=2.0))
        producer.send(t.FEEDBACK, "b", hb("b1", seq=seq, busy=1.0, pop="b"))
        ingest.consumer.poll_batch(ingest.handle)
        assert ingest.publish(clock[0]) == 2
        clock[0] += 1.0
    published = ingest.published
    for now in (102.0, 103.0, 103.5, 150.0, 500.0):  # silence: 400 s, past forget_after_s too
        clock[0] = now
        ingest.publish(now)
    assert ingest.in_outage and ingest.outages == 1
    assert ingest.published - published == 3 * 2  # the ticks within K intervals, both PoPs
    assert ingest.stats()["marked_down"] == ingest.stats()["forgotten"] == 0
    clock[0] = 501.0  # the bus is back: the first heartbeat of one server arrives
    producer.send(t.FEEDBACK, "a", hb("a1", seq=3, busy=2.0))
    ingest.consumer.poll_batch(ingest.handle)
    assert ingest.publish(501.0) == 2
    *_, a, b = bus.replay(t.POP_LOAD)
    for load in (a, b):
        assert load.at == 501.0
        assert load.healthy_capacity_cores > 0.0
        assert all(s.healthy for s in load.servers)
    assert not ingest.in_outage and ingest.stats()["marked_down"] == 0
    for seq in range(4, 9):  # b1 stays silent while a1 reports: b1 really is down now
        clock[0] += 1.0
        producer.send(t.FEEDBACK, "a", hb("a1", seq=seq, busy=2.0))
        ingest.consumer.poll_batch(ingest.handle)
    ingest.publish(clock[0])
    *_, b_after = (x for x in bus.replay(t.POP_LOAD) if x.pop == "b")
    assert [s.healthy for s in b_after.servers] == [False]


def test_a_silent_partition_ages_none_of_its_servers_while_others_report() -> None:
    """A broker leading a's partition dies: a's heartbeats stop arriving until Kafka elects a new
    leader, while b's partition flows. a's servers are not marked down (the bus, not them)."""
    clock, bus, ingest = on_bus()

    def arrive(pop: str, server: str, seq: int, partition: int) -> None:
        value = hb(server, seq=seq, busy=1.0, pop=pop)
        ingest.handle(Received(t.FEEDBACK.name, partition, seq, pop.encode(), value, b"", 0))

    arrive("a", "a1", 1, partition=0)
    arrive("b", "b1", 1, partition=1)
    for second in range(1, 8):  # a's partition silent for 7 s, b's reporting every second
        clock[0] = 10.0 + second
        arrive("b", "b1", 1 + second, partition=1)
        ingest.publish(clock[0])
    loads = {x.pop: x for x in bus.replay(t.POP_LOAD)}
    assert loads["a"].servers[0].healthy and loads["a"].healthy_capacity_cores == 4.0
    clock[0] = 18.0
    arrive("a", "a1", 2, partition=0)  # the partition is back; then a1 falls silent for real
    for second in range(1, 5):
        clock[0] = 18.0 + second
        arrive("b", "b1", 8 + second, partition=1)
        arrive("a", "a2", second, partition=0)  # a's partition flows, a1 says nothing
    ingest.publish(clock[0])
    a = {x.pop: x for x in bus.replay(t.POP_LOAD)}["a"]
    assert {s.server: s.healthy for s in a.servers} == {"a1": False, "a2": True}


def test_an_ingest_that_is_behind_ages_no_server_for_it() -> None:
    """A backlog handled slower than real time (a busy host, a rebalance): five servers each
    send once a second, the ingest handles a heartbeat every 0.9 s, so each server's heartbeats
    reach it 4.5 s apart, over K = 3 intervals. Liveness runs on the broker's append time, so
    nobody is marked down for the ingest's own lateness."""
    clock, bus, ingest = on_bus(100.0)
    producer = bus.producer()
    servers = [f"a{i}" for i in range(1, 6)]
    for second in range(4):
        clock[0] = 100.0 + second
        for server in servers:
            producer.send(t.FEEDBACK, "a", hb(server, seq=second + 1, busy=1.0))
    for handled in range(4 * len(servers)):
        clock[0] = 110.0 + 0.9 * handled
        assert ingest.consumer.poll_batch(ingest.handle, max_messages=1) == 1
        ingest.publish(clock[0] + 0.8)
    loads = bus.replay(t.POP_LOAD)
    assert loads and all(s.healthy for x in loads for s in x.servers)
