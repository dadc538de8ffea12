"""The policy engine adapter on the in-memory bus: statuses in, policies out, restart, overrides."""

from __future__ import annotations

import pytest

from popshift import redis_client
from popshift import topics as t
from popshift.bus import MemoryBus
from popshift.credentials import RedisAccess
from popshift.leadership import Leadership
from schemas.messages import PolicyAction, PolicyEvent
from services.policy_engine.overrides import Overrides, Pin
from services.policy_engine.service import OverridesSource, PolicyEngineService
from services.policy_engine.settings import PolicySettings
from tests.policy.test_engine import NETWORK, status

SETTINGS = PolicySettings(
    policy_holdoff_s=0.0, policy_max_step=1.0, policy_deadband=0.0, policy_tier_mix={0: 1.0}
)
NOW = 100.0


def engine_on(
    bus: MemoryBus, group: str = "pe", overrides: OverridesSource | None = None
) -> PolicyEngineService:
    settings = SETTINGS.model_copy(update={"policy_group": group})
    return PolicyEngineService(settings, NETWORK, bus, overrides=overrides, clock=lambda: NOW)


def send_loads(bus: MemoryBus, loads: dict[str, float]) -> None:
    producer = bus.producer()
    for pop, load in loads.items():
        producer.send(t.POP_STATUS, pop, status(pop, NOW, load))


def test_statuses_in_policies_out_keyed_by_source_and_unknown_pops_dead_lettered() -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 9.0, "b": 7.5, "c": 2.0, "zzz": 1.0})
    service = engine_on(bus)
    assert service.consumer.poll_batch(service.handle) == 4
    events = service.tick()
    assert {e.source: e.action for e in events} == {"a": PolicyAction.NEW, "b": PolicyAction.NEW}
    assert bus.replay(t.POLICIES) == events
    assert [r.key for r in bus.logs[t.POLICIES.name]] == [e.source.encode() for e in events]
    assert [x.reason for x in bus.dead_letters(t.POP_STATUS)] == ["unknown PoP 'zzz'"]
    assert service.tick() == []  # nothing changed: nothing said


def test_a_restarted_engine_replays_its_policies_continues_versions_reissues_nothing() -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 9.0, "b": 7.5, "c": 2.0})
    first = engine_on(bus)
    first.consumer.poll_batch(first.handle)
    issued = first.tick()
    first.close()
    again = engine_on(bus, group="pe-again")  # reads the same statuses once more
    assert again.state.version == max(e.version for e in issued)
    again.consumer.poll_batch(again.handle)
    assert again.tick() == []


def test_overrides_apply_at_once_and_a_failing_source_keeps_the_last_ones() -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 5.0, "b": 5.0, "c": 5.0})
    pins = [Overrides(pins=[Pin(source="a", destination="b", tier=0, share=0.3)])]

    def source() -> Overrides:
        if not pins:
            raise ValueError("Redis said no")
        return pins[0]

    service = engine_on(bus, overrides=source)
    service.consumer.poll_batch(service.handle)
    (pinned,) = service.tick()
    (share,) = pinned.shares
    assert share.destination == "b"
    assert share.share == pytest.approx(0.3)
    assert pinned.reason.rule.startswith("override: pinned t0->b")
    pins.clear()
    assert service.tick() == []  # the source failed: the pin stays
    published: list[PolicyEvent] = bus.replay(t.POLICIES, key="a")
    assert published == [pinned]


@pytest.mark.redis
def test_one_engine_leads_a_standby_takes_over_with_a_higher_epoch_and_rising_versions(
    redis_access: RedisAccess, unique: str
) -> None:
    bus = MemoryBus()
    send_loads(bus, {"a": 9.0, "b": 7.5, "c": 2.0})
    key = f"{unique}:leader"

    def engine(holder: str) -> PolicyEngineService:
        lock = Leadership(redis_client.connect(redis_access), key, holder, ttl_s=5.0)
        return PolicyEngineService(SETTINGS, NETWORK, bus, leadership=lock, clock=lambda: NOW)

    leader, standby = engine("one"), engine("two")
    for e in (leader, standby):  # both read every status: the standby is warm
        assert e.consumer.poll_batch(e.handle) == 3
    first = leader.tick()
    assert first and standby.tick() == []
    epoch = first[0].epoch
    assert epoch > 0 and {e.epoch for e in first} == {epoch}
    leader.close()  # gives the lock up
    send_loads(bus, {"a": 9.5})
    standby.consumer.poll_batch(standby.handle)
    taken = standby.tick()
    assert taken  # a's load changed: the new leader re-solves at once
    assert standby.state.epoch == epoch + 1
    assert standby.state.version >= max(e.version for e in first)  # continued, not restarted
    assert all(e.epoch == epoch + 1 and e.version > max(x.version for x in first) for e in taken)
    assert leader.tick() == []  # the old leader says nothing any more
