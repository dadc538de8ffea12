"""The ACL table itself (popshift/access.py), without a broker: who may write what."""

from __future__ import annotations

from popshift import topics as t
from popshift.access import KafkaGrant, Naming, principals
from popshift.settings import Settings


def naming(prefix: str = "") -> Naming:
    return Naming(
        settings=Settings(topic_prefix=prefix),
        ingest_group="g-ingest",
        analytics_app_id="app",
        policy_group="g-policy",
        table_group_prefix="g-table",
        sync_group_prefix="g-sync",
        table_key_prefix="tbl",
        leader_key="lead",
        overrides_key="ovr",
    )


def writers_of(topic: str, n: Naming) -> set[str]:
    return {
        p.name
        for p in principals(n, ["a", "b"])
        for g in p.kafka
        if g.resource == "TOPIC" and g.name == topic and g.operation in ("WRITE", "ALL")
    }


def test_each_topic_has_exactly_the_writers_the_data_flow_needs() -> None:
    n = naming("lab1")
    assert writers_of("lab1.policies.v1", n) == {"engine"}
    assert writers_of("lab1.feedback.v1", n) == {"agent"}
    assert writers_of("lab1.pop-status.v1", n) == {"analytics"}
    assert writers_of("lab1.table-updates.v1", n) == {"writer-a", "writer-b"}
    assert writers_of("lab1.policy-audit.v1", n) == {"operator"}


def test_every_consumer_may_dead_letter_what_it_reads() -> None:
    n = naming()
    for p in principals(n, ["a"]):
        reads = {g.name for g in p.kafka if g.resource == "TOPIC" and g.operation == "READ"}
        writes = {g.name for g in p.kafka if g.operation == "WRITE"}
        if p.name == "operator":
            continue  # it only replays (policy log, status, explain): no live consumer, no DLQ
        for topic in t.ALL_TOPICS:
            # the engine replays policies.v1: no live consumer, no DLQ
            if topic.name in reads and topic not in (t.POLICIES, t.POLICY_AUDIT):
                assert topic.dead_letter in writes, (p.name, topic.name)


def test_per_pop_principals_touch_only_their_pops_keys_and_groups() -> None:
    by_name = {p.name: p for p in principals(naming(), ["a", "b"])}
    writer_a, sync_a = by_name["writer-a"], by_name["sync-a"]
    assert "~tbl:a:*" in writer_a.redis and not any("tbl:b" in r for r in writer_a.redis)
    assert "%R~tbl:a:*" in sync_a.redis and "~tbl:a:*" not in sync_a.redis
    assert KafkaGrant("GROUP", "g-table-a", "READ") in writer_a.kafka
    assert not any(g.name.endswith("-b") for g in writer_a.kafka if g.resource == "GROUP")
    # Nobody but the admin empties or reconfigures Redis.
    assert all("-@dangerous" in p.redis for p in by_name.values() if p.redis)


def test_a_pops_sync_groups_cannot_cover_another_pop_whose_name_extends_it() -> None:
    by_name = {p.name: p for p in principals(naming(), ["ams", "ams-2"])}
    (prefix,) = [g.name for g in by_name["sync-ams"].kafka if g.resource == "GROUP"]
    assert not "g-sync-ams-2:node1".startswith(prefix)
    assert "g-sync-ams:node1".startswith(prefix)
