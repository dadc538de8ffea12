"""The operator's view (popshift/view.py): what `popshift status` and `explain` make of the
latest messages, on the lab's network (a -10 ms- b -12 ms- c, a -45 ms- c)."""

from __future__ import annotations

import pytest

from popshift.network import NetworkConfig, load_network
from popshift.view import NetworkView, explain_lines, status_lines
from schemas.messages import (
    PolicyAction,
    PolicyEvent,
    PolicyReason,
    PopState,
    PopStatus,
    Share,
    TableUpdate,
)

NETWORK = load_network("deploy/config/network.yaml")
NOW = 1_000.0


def _status(pop: str, state: PopState, util: float, at: float = NOW - 1.0) -> PopStatus:
    return PopStatus(
        pop=pop, at=at, state=state, since=at - 20.0, utilisation=util, capacity_cores=4.0,
        load_cores=4.0 * util, excess_cores=0.5 if state is PopState.SHED else 0.0,
        rule="combined_over: 0.950 > 0.85" if state is PopState.SHED else None,
    )  # fmt: skip


def _policy(
    source: str, dst: str, share: float, expected: dict[str, float], *, version: int = 7,
    infeasible: bool = False, expires_at: float = NOW + 10.0,
) -> PolicyEvent:  # fmt: skip
    return PolicyEvent(
        action=PolicyAction.NEW, source=source, version=version, epoch=2, issued_at=NOW - 5.0,
        expires_at=expires_at, shares=[Share(tier=0, destination=dst, share=share)],
        reason=PolicyReason(trigger_pop=source, rule=f"shed: {source} over target",
                            expected_utilisation=expected, infeasible=infeasible),
    )  # fmt: skip


def _view(*policies: PolicyEvent) -> NetworkView:
    return NetworkView().observe(
        [
            _status("a", PopState.SHED, 0.95),
            _status("b", PopState.NEUTRAL, 0.60),
            _status("c", PopState.CAN_TAKE, 0.30, at=NOW - 60.0),  # stale: 60 s old
            _status("a", PopState.NEUTRAL, 0.50, at=NOW - 30.0),  # older: ignored
            TableUpdate(
                pop="a",
                tier=0,
                version=12,
                policy_version=7,
                buckets_changed=40,
                written_at=NOW - 4.0,
            ),
            *policies,
        ]
    )


def test_status_shows_each_pop_with_its_verdict_policy_and_tables() -> None:
    view = _view(_policy("a", "b", 0.25, {"a": 0.74, "b": 0.70}))
    view.lag = {"ingest": 3, "analytics": None}
    lines = status_lines(view, NETWORK, NOW, max_age_s=10.0)
    row = {line.split()[0]: line for line in lines[1:4]}
    assert "95%" in row["a"] and "shed" in row["a"] and "t0->b 25%" in row["a"]
    assert "t0:v12" in row["a"]
    assert "neutral" in row["b"] and row["b"].rstrip().endswith("-")
    assert "stale" in row["c"]
    assert "  ingest: 3 messages" in lines and "  analytics: unknown" in lines


def test_a_lapsed_or_cancelled_policy_is_not_in_force() -> None:
    lapsed = _view(_policy("a", "b", 0.25, {}, expires_at=NOW - 1.0))
    assert "t0->b" not in status_lines(lapsed, NETWORK, NOW, 10.0)[1]
    cancel = _policy("a", "b", 0.25, {}, version=8).model_copy(
        update={"action": PolicyAction.CANCEL, "shares": []}
    )
    view = _view(_policy("a", "b", 0.25, {}), cancel)
    assert view.in_force("a", NOW) is None


def test_explain_names_the_receiver_that_binds_and_why_each_peer_is_unused() -> None:
    view = _view(_policy("a", "b", 0.40, {"a": 0.80, "b": 0.74}))
    text = "\n".join(explain_lines(view, NETWORK, "a", NOW, max_age_s=10.0))
    assert "analytics: shed" in text and "rule: combined_over" in text
    assert "policy v7 (epoch 2): t0->b 40%" in text
    assert "binds: receivers at their target: b expected 74% of 75%" in text
    # c is beyond tier 0's 30 ms bound from a (45 ms): the reason is the latency, not c's state
    assert "not used: c: 45 ms away, beyond the tier's bound of 30 ms" in text


def test_explain_of_a_receiver_and_of_an_infeasible_policy() -> None:
    view = _view(_policy("a", "b", 0.40, {"a": 0.90, "b": 0.60}, infeasible=True))
    text = "\n".join(explain_lines(view, NETWORK, "a", NOW, max_age_s=10.0))
    assert "binds: capacity" in text
    receiver = "\n".join(explain_lines(view, NETWORK, "b", NOW, max_age_s=10.0))
    assert "receives 40% of a's tier 0" in receiver and "policy: none in force" in receiver


def test_explain_when_only_the_sources_own_target_binds() -> None:
    view = _view(_policy("a", "b", 0.20, {"a": 0.75, "b": 0.55}))
    text = "\n".join(explain_lines(view, NETWORK, "a", NOW, max_age_s=10.0))
    assert "binds: a's own target" in text


def test_explain_of_a_pinned_share_names_the_override_not_a_target() -> None:
    policy = _policy("a", "b", 0.25, {"a": 0.28, "b": 0.16})
    rule = "override: pinned t0->b; t0->b 0.000->0.250"
    pinned = policy.model_copy(update={"reason": policy.reason.model_copy(update={"rule": rule})})
    text = "\n".join(explain_lines(_view(pinned), NETWORK, "a", NOW, max_age_s=10.0))
    assert "binds: an operator's override" in text and "own target" not in text


def test_explain_of_an_unknown_pop_is_refused_before_reading_kafka(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from popshift.status import explain_main

    assert explain_main(["zzz"]) == 2  # no broker is asked: the network file says no
    assert "unknown PoP 'zzz'" in capsys.readouterr().err


def test_a_policy_naming_a_pop_outside_the_network_is_not_a_row() -> None:
    """The topics may hold what the network file no longer knows (a PoP removed): status shows
    the network's PoPs only, and explain's peers come from the network, not the messages."""
    stray = _policy("zzz", "a", 0.5, {})
    view = _view(stray)
    rows = [line.split()[0] for line in status_lines(view, NETWORK, NOW, 10.0)[1:4]]
    assert rows == ["a", "b", "c"]
    text = "\n".join(explain_lines(view, NETWORK, "a", NOW, max_age_s=10.0))
    assert "receives 50% of zzz's tier 0" in text and "not used: zzz" not in text


def test_an_explanation_names_the_nearest_unused_peers_only() -> None:
    """300 PoPs: the ten nearest peers not used, nearest first, then how many more."""
    names = [f"p{i:03d}" for i in range(40)]
    pops = [
        {"name": n, "id": i + 1, "ingress": f"10.0.0.{i + 1}",
         "server_prefixes": [f"10.{i}.0.0/16"], "max_server_cores": 64.0}
        for i, n in enumerate(names)
    ]  # fmt: skip
    network = NetworkConfig.model_validate(
        {
            "pops": pops,
            "tiers": [{"id": 0, "name": "web", "max_added_latency_ms": 30.0}],
            "latency_ms": {"p000": {n: 100.0 - i for i, n in enumerate(names) if i}},
        }
    )
    now = 100.0
    view = NetworkView().observe(
        [
            PolicyEvent(
                action=PolicyAction.NEW, source="p000", version=1, issued_at=now,
                expires_at=now + 15.0, shares=[Share(tier=0, destination="p039", share=0.2)],
                reason=PolicyReason(trigger_pop="p000", rule="shed"),
            )
        ]
    )  # fmt: skip
    lines = [x for x in explain_lines(view, network, "p000", now, 10.0) if "not used" in x]
    assert [x.split(":")[1].strip() for x in lines[:10]] == [f"p{i:03d}" for i in range(38, 28, -1)]
    assert lines[10] == "  not used: 28 more, all farther away" and len(lines) == 11
