"""run_ticking and the Outbox when Kafka cannot deliver: nothing escapes, nothing is lost."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException
from pydantic import BaseModel

from popshift import topics as t
from popshift.bus import DeliveryFailed, MemoryBus, MemoryProducer, Outbox
from popshift.process import run_ticking
from tests.samples import POLICY


def test_delivery_failures_and_transient_errors_never_end_the_ticking_loop() -> None:
    stop = threading.Event()
    clock = [0.0]
    ticks: list[float] = []

    def poll(_wait: float) -> None:
        clock[0] += 0.5
        if clock[0] == 1.0:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
        if clock[0] == 2.0:
            raise DeliveryFailed("dead letter not delivered", undelivered=1)

    def tick() -> None:
        ticks.append(clock[0])
        if len(ticks) in (2, 3):
            raise DeliveryFailed("policies not delivered", failed=1)
        if len(ticks) == 6:
            stop.set()

    stop_wait = stop.wait
    stop.wait = lambda timeout=None: stop.is_set() or stop_wait(0)  # type: ignore[method-assign]
    failures = run_ticking(poll, tick, 1.0, stop, lambda: clock[0])
    assert len(ticks) == 6 and failures == 4


class FlakyProducer(MemoryProducer):
    """Delivers to the in-memory bus, but its flush fails as told (as TypedProducer's does)."""

    def __init__(self, bus: MemoryBus) -> None:
        super().__init__(bus)
        self.outcome: DeliveryFailed | None = None

    def flush(self, timeout: float = 30.0) -> None:
        if self.outcome is not None:
            raise self.outcome


def test_the_outbox_waits_while_queued_and_resends_the_latest_per_key_when_lost() -> None:
    bus = MemoryBus()
    producer = FlakyProducer(bus)
    outbox = Outbox(producer, flush_timeout_s=0.1)
    v1 = POLICY.model_copy(update={"version": 1})
    v2 = POLICY.model_copy(update={"version": 2})
    producer.outcome = DeliveryFailed("queued", undelivered=2)
    outbox.send(t.POLICIES, "a", v1)
    outbox.send(t.POLICIES, "a", v2)
    assert not outbox.flush() and outbox.pending == 1
    assert len(bus.logs[t.POLICIES.name]) == 2  # still queued: not sent again
    producer.outcome = DeliveryFailed("lost", failed=2)
    assert not outbox.flush()
    sent: list[BaseModel] = bus.replay(t.POLICIES)
    assert sent[-1] == v2 and len(sent) == 3  # the latest, once more
    producer.outcome = None
    assert outbox.flush() and outbox.pending == 0
    assert outbox.flush_failures == 2 and outbox.resent == 1
