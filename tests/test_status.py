"""`popshift status`'s adapter (popshift/status.py) against the real Kafka: the latest message
per key of each topic, the recent ones only where the topic is a stream, and a group's lag."""

from __future__ import annotations

import time

import pytest

from popshift import topics as t
from popshift.bus import TypedConsumer, TypedProducer, create_topics
from popshift.credentials import KafkaAccess
from popshift.settings import Settings
from popshift.status import group_lag, read_view
from schemas.messages import (
    PolicyAction,
    PolicyEvent,
    PolicyReason,
    PopState,
    PopStatus,
    Share,
    TableUpdate,
)

pytestmark = pytest.mark.kafka


def _status(pop: str, state: PopState, at: float) -> PopStatus:
    return PopStatus(pop=pop, at=at, state=state, since=at, utilisation=0.5,
                     capacity_cores=4.0, load_cores=2.0)  # fmt: skip


def test_the_view_reads_the_latest_of_each_topic_and_a_groups_lag(
    kafka: KafkaAccess, unique: str
) -> None:
    settings = Settings(topic_prefix=unique)
    wanted = [settings.topic(x) for x in (t.POP_STATUS, t.POLICIES, t.TABLE_UPDATES)]
    create_topics(kafka, wanted, partitions=1)
    status, policies, tables = wanted
    producer = TypedProducer(kafka)
    now = time.time()
    producer.send(status, "a", _status("a", PopState.NEUTRAL, now - 2.0))
    producer.send(status, "a", _status("a", PopState.SHED, now - 1.0))
    producer.send(status, "b", _status("b", PopState.CAN_TAKE, now - 1.0))
    for version in (1, 2):
        producer.send(policies, "a", PolicyEvent(
            action=PolicyAction.NEW if version == 1 else PolicyAction.UPDATE, source="a",
            version=version, epoch=1, issued_at=now, expires_at=now + 15.0,
            shares=[Share(tier=0, destination="b", share=0.1 * version)],
            reason=PolicyReason(trigger_pop="a", rule="shed"),
        ))  # fmt: skip
    producer.send(tables, "a", TableUpdate(pop="a", tier=0, version=5, policy_version=2,
                                           buckets_changed=3, written_at=now))  # fmt: skip
    producer.flush()

    view = read_view(settings, ["a", "b"], with_lag=False)
    assert view.statuses["a"].state is PopState.SHED
    assert view.statuses["b"].state is PopState.CAN_TAKE
    assert view.policies["a"].version == 2 and view.policies["a"].shares[0].share == 0.2
    assert view.tables[("a", 0)].version == 5

    # a group that handled one of the three statuses is two behind
    group = f"{unique}-g"
    consumer = TypedConsumer(kafka, group, [status])
    try:
        end = time.monotonic() + 30.0
        while consumer.stats.handled < 1 and time.monotonic() < end:
            consumer.poll_batch(lambda r: None, timeout=0.5, max_messages=1)
        consumer.commit()
    finally:
        consumer.close()
    assert group_lag(settings, [group]) == {group: 2}
    assert group_lag(settings, [f"{unique}-nobody"]) == {f"{unique}-nobody": None}
