"""Agents -> ingest -> analytics over the real broker, the services as real processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from popshift import topics as t
from popshift.bus import Received, create_topics
from popshift.credentials import KafkaAccess
from popshift.settings import Settings
from schemas.messages import PopState, PopStatus
from tests.feedback.helpers import SimulatedAgents, TopicReader, service

pytestmark = pytest.mark.kafka

INTERVAL_S = 0.5
MISSED = 2
WINDOW_S = 2.0
DWELL_S = 2.0
REFRESH_S = 1.0
SLACK_S = 3.0  # publish tick, Kafka hops, scheduling on a 2-core machine

RULES = {
    "defaults": {
        "window_s": WINDOW_S,
        "min_dwell_s": DWELL_S,
        "refresh_s": REFRESH_S,
        "shed": {"combined_over": {"enter": 0.85, "exit": 0.75}},
        "can_take": {"combined_under": {"enter": 0.6, "exit": 0.7}},
    }
}


def latest(msgs: list[Received], since: float = 0.0) -> dict[str, PopStatus]:
    out: dict[str, PopStatus] = {}
    for r in msgs:
        if r.value.at >= since:
            out[r.value.pop] = r.value
    return out


def test_overload_is_flagged_within_the_window_and_a_silent_server_leaves_capacity(
    kafka: KafkaAccess, unique: str, tmp_path: Path
) -> None:
    names = Settings(topic_prefix=unique)
    create_topics(kafka, [names.topic(x) for x in (t.FEEDBACK, t.POP_LOAD, t.POP_STATUS)], 2)
    config = tmp_path / "analytics.yaml"
    config.write_text(yaml.safe_dump(RULES))
    env = {
        "POPSHIFT_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "POPSHIFT_TOPIC_PREFIX": unique,
        "POPSHIFT_INGEST_GROUP": f"{unique}-ingest",
        "POPSHIFT_HEARTBEAT_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_MISSED_HEARTBEATS": str(MISSED),
        "POPSHIFT_PUBLISH_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_ANALYTICS_APP_ID": f"{unique}-analytics",
        "POPSHIFT_ANALYTICS_CONFIG": str(config),
        "POPSHIFT_ANALYTICS_DATADIR": str(tmp_path / "faust"),
    }
    servers = {pop: [f"{pop}{i}" for i in range(1, 5)] for pop in ("a", "b", "c")}
    statuses = TopicReader(kafka, names.topic(t.POP_STATUS), f"{unique}-reader")
    with (
        service("services.feedback_ingest.ingest", env),
        service("services.analytics.app", env),
        SimulatedAgents(kafka, names.topic(t.FEEDBACK), servers, INTERVAL_S) as agents,
    ):
        for pop in servers:
            agents.set(pop, 0.65)
        # the pipeline is up once every PoP has a (neutral) verdict; faust needs a while to join
        statuses.wait_for(lambda ms: len(latest(ms)) == 3, 90, "first statuses")

        changed = time.time()
        agents.set("a", 0.95)
        agents.set("b", 0.3)

        def flagged(ms: list[Received]) -> Any:
            now = latest(ms, since=changed)
            a, b = now.get("a"), now.get("b")
            return a and b and a.state is PopState.SHED and b.state is PopState.CAN_TAKE and now

        now = statuses.wait_for(flagged, WINDOW_S + DWELL_S + SLACK_S, "a sheds, b can take")
        assert time.time() - changed < WINDOW_S + DWELL_S + SLACK_S
        a = now["a"]
        assert a.rule is not None
        assert a.rule.startswith("combined_over")
        assert a.excess_cores > 0.0
        assert now["b"].capacity_cores == 16.0
        assert now["b"].headroom_cores > 0.0
        assert latest(statuses.messages)["c"].state is PopState.NEUTRAL

        # b's window now holds only its new load (4 x 0.3 x 4 cores): the headroom to compare
        b = statuses.wait_for(
            lambda ms: (s := latest(ms).get("b")) and abs(s.load_cores - 4.8) < 0.05 and s,
            WINDOW_S + SLACK_S,
            "b settled",
        )
        agents.silent.add("b4")
        silenced = time.time()

        def shrunk(ms: list[Received]) -> Any:
            b_now = latest(ms, since=silenced).get("b")
            return b_now and b_now.capacity_cores == 12.0 and b_now

        deadline = MISSED * INTERVAL_S + REFRESH_S + SLACK_S
        b_after = statuses.wait_for(shrunk, deadline, "b loses b4's capacity")
        assert b_after.state is PopState.CAN_TAKE
        assert b_after.headroom_cores < b.headroom_cores
    statuses.close()
    assert agents.sent > 0
