"""The faust agent through faust's own test context: no broker, the real agent and analyzer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest

from popshift import topics as t
from popshift.bus import MemoryBus, Outgoing
from schemas.messages import DeadLetter, PopState, PopStatus
from services.analytics.app import AGENT_NAME, Analytics, AnalyticsSettings, build_app
from services.analytics.config import AnalyticsConfig
from services.analytics.window import Analyzer
from tests.analytics.test_rules import RULES, pop_load

PREFIX = "test"
STATUSES = f"{PREFIX}.pop-status.v1"


@pytest.fixture
def app(unique: str, tmp_path: Path) -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()  # faust takes the current loop; each test gets its own
    asyncio.set_event_loop(loop)
    settings = AnalyticsSettings(
        analytics_app_id=f"{unique}-analytics",
        topic_prefix=PREFIX,
        analytics_datadir=str(tmp_path),
    )
    app = build_app(settings, Analyzer(AnalyticsConfig(defaults=RULES)))
    yield app
    # test_context never starts the consumer thread, so its loop would be left open
    consumer = getattr(app, "_consumer", None)
    if consumer is not None:
        consumer._thread.thread_loop.close()
    loop.close()
    asyncio.set_event_loop(None)


def run(app: faust.App, messages: list[bytes]) -> list[list[Outgoing]]:
    async def feed() -> dict[int, Any]:
        async with app.agents[AGENT_NAME].test_context(sink=[]) as agent:
            for raw in messages:
                await agent.put(raw, key=b"a")
            return dict(agent.results)

    results = app.loop.run_until_complete(feed())
    return [results[i] for i in range(len(messages))]


def status_of(outgoing: list[Outgoing]) -> PopStatus | None:
    statuses = [PopStatus.model_validate_json(o.value) for o in outgoing if o.topic == STATUSES]
    return statuses[0] if statuses else None


def test_agent_turns_a_load_sequence_into_statuses(app: faust.App) -> None:
    utils = [0.65, 0.65, 0.9, 0.9, 0.8, 0.7, 0.7]
    results = run(
        app, [pop_load(float(t), [u] * 4).model_dump_json().encode() for t, u in enumerate(utils)]
    )
    statuses = [status_of(out) for out in results]
    assert [s.state if s else None for s in statuses] == [
        None,  # one sample is less than a window: no verdict yet
        PopState.NEUTRAL,
        PopState.SHED,
        None,
        None,
        None,
        None,  # below exit but still within the 10 s dwell: no change, no refresh yet
    ]
    shed = statuses[2]
    assert shed is not None
    assert shed.rule is not None
    assert shed.rule.startswith("combined_over")
    assert json.loads(results[2][0].value)["state"] == "shed"
    assert all(o.key == b"a" and o.topic == STATUSES for out in results for o in out)


def test_invalid_pop_load_becomes_a_dead_letter_and_the_stream_goes_on(app: faust.App) -> None:
    earlier = pop_load(0.0, [0.9] * 4).model_dump_json()  # with `good`, a whole window
    good = pop_load(1.0, [0.9] * 4).model_dump_json()
    _, first, second, third = run(
        app,
        [
            earlier.encode(),
            b"{not json",
            good.replace('"healthy_capacity_cores":16.0', '"healthy_capacity_cores":-1').encode(),
            good.encode(),
        ],
    )
    letters = [DeadLetter.model_validate_json(o.value) for o in (*first, *second)]
    assert [o.topic for o in (*first, *second)] == [f"{PREFIX}.pop-load.dlq.v1"] * 2
    assert letters[0].reason.startswith("invalid: ")
    assert letters[0].payload_b64
    assert "healthy_capacity_cores" in letters[1].reason
    third_status = status_of(third)
    assert third_status is not None and third_status.state is PopState.SHED


def test_the_adapter_on_the_memory_bus_shares_the_bus_checks_and_dead_letters() -> None:
    """What every consumer does: the size limit, validation, dead letters with their reason."""
    settings = AnalyticsSettings(max_message_bytes=2048)
    analytics = Analytics(settings, Analyzer(AnalyticsConfig(defaults=RULES)))
    bus = MemoryBus()
    producer = bus.producer()
    producer.send(t.POP_LOAD, "a", pop_load(0.0, [0.9] * 4))  # less than a window: no verdict
    producer.send(t.POP_LOAD, "a", pop_load(1.0, [0.9] * 4))
    producer.send_raw(t.POP_LOAD.name, "a", b'{"pad":"' + b"x" * 4096 + b'"}', [])
    producer.send_raw(t.POP_LOAD.name, "a", b"{not json", [])
    for r in bus.logs[t.POP_LOAD.name]:
        for out in analytics.decide(0, r.offset, r.key, r.value, r.headers):
            producer.send_raw(out.topic, out.key, out.value, out.headers)

    (status,) = bus.replay(t.POP_STATUS)
    assert status.pop == "a" and status.state is PopState.SHED
    letters = bus.dead_letters(t.POP_LOAD)
    assert [(x.offset, x.reason.split(":")[0]) for x in letters] == [
        (2, "oversized"),
        (3, "invalid"),
    ]
    assert letters[0].reason == "oversized: 4106 bytes > limit 2048"
    assert dict(bus.logs[t.POP_LOAD.dead_letter][0].headers)["popshift-reason"]
