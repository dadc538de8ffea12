"""What the console shows (popshift/console_model.py) and the timeline it reads
(popshift/view.py), from messages built here: pure, no Kafka."""

from __future__ import annotations

import pytest

from popshift.console_model import arrows, details, snapshot
from popshift.network import NetworkConfig
from popshift.view import NetworkView
from schemas.messages import (
    DataplaneStats,
    PolicyAction,
    PolicyEvent,
    PolicyReason,
    PopLoad,
    PopState,
    PopStatus,
    ServerLoad,
    Share,
    TableUpdate,
    TierCounters,
)

NOW = 1_000.0
MAX_AGE = 10.0


@pytest.fixture
def network() -> NetworkConfig:
    pops = [
        {"name": n, "id": i + 1, "ingress": f"10.0.0.{i + 1}",
         "server_prefixes": [f"10.{i}.0.0/16"], "max_server_cores": 64.0,
         "target_utilisation": 0.75, **({"lat": 48.8, "lon": 2.3} if n == "a" else {})}
        for i, n in enumerate(("a", "b", "c"))
    ]  # fmt: skip
    return NetworkConfig.model_validate(
        {
            "pops": pops,
            "tiers": [{"id": 0, "name": "web", "max_added_latency_ms": 30.0}],
            "latency_ms": {"a": {"b": 10.0, "c": 40.0}, "b": {"a": 10.0, "c": 10.0}},
        }
    )


def status(pop: str, state: PopState, at: float, util: float = 0.5) -> PopStatus:
    rule = f"{pop} rule" if state is PopState.SHED else None
    return PopStatus(pop=pop, at=at, state=state, since=at, utilisation=util, capacity_cores=4.0,
                     load_cores=4.0 * util, rule=rule)  # fmt: skip


def policy(
    version: int,
    shares: dict[str, float],
    action: PolicyAction = PolicyAction.UPDATE,
    expires_at: float | None = NOW + 10.0,
    source: str = "a",
) -> PolicyEvent:
    return PolicyEvent(
        action=action, source=source, version=version, epoch=1, issued_at=NOW - 10.0 + version,
        expires_at=expires_at,
        shares=[Share(tier=0, destination=d, share=s) for d, s in shares.items()],
        reason=PolicyReason(trigger_pop=source, rule=f"shed: {source} at 0.97 > target 0.75",
                            expected_utilisation={"b": 0.7}),
    )  # fmt: skip


def test_the_timeline_has_status_turns_and_share_changes_not_renewals() -> None:
    view = NetworkView().observe(
        [
            status("b", PopState.NEUTRAL, NOW - 9),  # a first neutral verdict is not news
            status("a", PopState.NEUTRAL, NOW - 8),
            status("a", PopState.SHED, NOW - 7, 0.97),
            policy(1, {"b": 0.4}, PolicyAction.NEW),
            policy(2, {"b": 0.4}),  # a renewal
            policy(3, {"b": 0.5}),
            policy(4, {}, PolicyAction.CANCEL),
            status("a", PopState.SHED, NOW - 6, 0.9),  # still shed
        ]
    )
    texts = [c.text for c in view.history]
    assert texts == [
        "a: neutral -> shed at 97%",
        "a v1 new: t0->b 40%",
        "a v3 update: t0->b 50%",
        "a v4 cancel: cancel: all local",
    ]
    assert view.history[0].reason == "a rule"
    assert view.history[1].reason.startswith("shed: a at 0.97")


def test_an_older_message_changes_neither_the_view_nor_the_timeline() -> None:
    view = NetworkView().observe([status("a", PopState.SHED, NOW), policy(5, {"b": 0.3})])
    view.observe([status("a", PopState.NEUTRAL, NOW - 5), policy(4, {"b": 0.9})])
    assert view.statuses["a"].state is PopState.SHED
    assert view.policies["a"].version == 5
    assert len(view.history) == 2


def test_an_arrow_per_destination_with_its_share_and_reason_while_the_lease_runs() -> None:
    view = NetworkView().observe([policy(1, {"b": 0.4, "c": 0.1})])
    got = arrows(view, NOW)
    assert [(a["source"], a["destination"], a["label"]) for a in got] == [
        ("a", "b", "t0 40%"),
        ("a", "c", "t0 10%"),
    ]
    assert got[0]["reason"] == "shed: a at 0.97 > target 0.75"
    assert got[0]["expected"] == 0.7 and got[1]["expected"] is None
    assert got[0]["lease_left_s"] == pytest.approx(10.0)
    assert arrows(view, NOW + 11.0) == []  # the lease ran out: nothing is forwarded
    view.observe([policy(2, {}, PolicyAction.CANCEL)])
    assert arrows(view, NOW) == []


def test_the_snapshot_has_every_pop_with_its_status_word_and_place(
    network: NetworkConfig,
) -> None:
    view = NetworkView().observe(
        [status("a", PopState.SHED, NOW - 1, 0.97), status("b", PopState.CAN_TAKE, NOW - 60)]
    )
    snap = snapshot(view, network, NOW, MAX_AGE)
    pops = {p["name"]: p for p in snap["pops"]}
    assert [p["name"] for p in snap["pops"]] == ["a", "b", "c"]
    assert pops["a"]["status"] == "shed" and pops["a"]["utilisation"] == 0.97
    assert (pops["a"]["lat"], pops["a"]["lon"]) == (48.8, 2.3)
    assert pops["b"]["status"] == "stale"  # a minute without a verdict
    assert pops["c"]["status"] == "unknown" and pops["c"]["lat"] is None
    assert snap["focus"] is None
    assert snapshot(view, network, NOW, MAX_AGE, focus="zz")["focus"] is None


def test_the_drill_down_has_servers_tables_counters_and_the_explanation(
    network: NetworkConfig,
) -> None:
    view = NetworkView().observe(
        [
            status("a", PopState.SHED, NOW - 1, 0.97),
            status("b", PopState.CAN_TAKE, NOW - 1, 0.3),
            policy(1, {"b": 0.4}, PolicyAction.NEW),
            PopLoad(pop="a", at=NOW - 2, healthy_capacity_cores=4.0, combined_load_cores=3.9,
                    servers=[ServerLoad(server="a1", address="10.0.0.11", capacity_cores=4.0,
                                        utilisation=0.97, last_seen=NOW - 3)]),
            TableUpdate(pop="a", tier=0, version=7, policy_version=1, buckets_changed=410,
                        written_at=NOW - 4, buckets=1024, buckets_away={"b": 410}),
            TableUpdate(pop="b", tier=0, version=2, policy_version=0, buckets_changed=1,
                        written_at=NOW - 4),
            DataplaneStats(pop="a", node="a-edge", at=NOW - 1,
                           tiers=[TierCounters(tier=0, local=600, inter_pop_forward=400)]),
        ]
    )  # fmt: skip
    d = details(view, network, "a", NOW, MAX_AGE)
    assert d["servers"] == [
        {"server": "a1", "address": "10.0.0.11", "utilisation": 0.97, "capacity_cores": 4.0,
         "healthy": True, "heartbeat_age_s": 3.0}
    ]  # fmt: skip
    assert d["pop_load_age_s"] == 2.0
    assert [(t["tier"], t["version"], t["buckets_away"], t["buckets"]) for t in d["tables"]] == [
        (0, 7, {"b": 410}, 1024)
    ]
    assert d["counters"][0]["node"] == "a-edge" and d["counters"][0]["inter_pop_forward"] == 400
    assert d["explain"][0].startswith("a: target 75%")
    assert any("engine's reason: shed: a at 0.97" in line for line in d["explain"])
    assert snapshot(view, network, NOW, MAX_AGE, focus="a")["focus"] == d
