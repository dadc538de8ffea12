"""The faust agent through faust's own test context: no broker, the real agent and analyzer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest

from schemas.messages import PopState, PopStatus
from services.analytics.app import AGENT_NAME, AnalyticsSettings, Decision, build_app
from services.analytics.config import AnalyticsConfig
from services.analytics.window import Analyzer
from tests.analytics.test_rules import RULES, pop_load


@pytest.fixture
def app(unique: str, tmp_path: Path) -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()  # faust takes the current loop; each test gets its own
    asyncio.set_event_loop(loop)
    settings = AnalyticsSettings(
        analytics_app_id=f"{unique}-analytics",
        topic_prefix=unique,
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


def run(app: faust.App, messages: list[bytes]) -> list[Decision]:
    async def feed() -> dict[int, Any]:
        async with app.agents[AGENT_NAME].test_context(sink=[]) as agent:
            for raw in messages:
                await agent.put(raw, key=b"a")
            return dict(agent.results)

    results = app.loop.run_until_complete(feed())
    return [results[i] for i in range(len(messages))]


def test_agent_turns_a_load_sequence_into_statuses(app: faust.App) -> None:
    utils = [0.65, 0.65, 0.9, 0.9, 0.8, 0.7, 0.7]
    decisions = run(
        app, [pop_load(float(t), [u] * 4).model_dump_json().encode() for t, u in enumerate(utils)]
    )
    statuses = [d.status for d in decisions]
    assert [s.state if s else None for s in statuses] == [
        PopState.NEUTRAL,
        None,
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
    # what the sink puts on pop-status.v1 validates as the schema, byte for byte
    wire = shed.model_dump_json().encode()
    assert PopStatus.model_validate_json(wire) == shed
    assert json.loads(wire)["state"] == "shed"
    assert all(d.key == b"a" and d.dead_letter is None for d in decisions)


def test_invalid_pop_load_becomes_a_dead_letter_and_the_stream_goes_on(app: faust.App) -> None:
    good = pop_load(1.0, [0.9] * 4).model_dump_json()
    decisions = run(
        app,
        [
            b"{not json",
            good.replace('"healthy_capacity_cores":16.0', '"healthy_capacity_cores":-1').encode(),
            good.encode(),
        ],
    )
    first, second, third = decisions
    assert first.dead_letter is not None
    assert first.dead_letter.reason.startswith("invalid: ")
    assert first.dead_letter.payload_b64
    assert second.dead_letter is not None
    assert "healthy_capacity_cores" in second.dead_letter.reason
    assert third.dead_letter is None
    assert third.status is not None
    assert third.status.state is PopState.SHED
