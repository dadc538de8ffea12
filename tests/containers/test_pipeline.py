"""The control plane in containers, end to end: heartbeats in, pop-status, a policy, tables.

PoP a's servers report 95 % busy and b's and c's 30 %; analytics must flag a (shed) and b, c
(can take), the engine must move a share of a's new connections to b (c is beyond the tiers'
latency bound from a: deploy/config/network.yaml), and a's table writer must point exactly that
many of a's buckets at b's ingress in Redis and announce it on table-updates.v1. The second test
kills containers with SIGKILL mid-run and restarts them: what they missed must still arrive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import pytest
import redis

from popshift import redis_client
from popshift import topics as t
from popshift.bus import Received
from schemas.messages import PolicyAction, PolicyEvent, PopState, PopStatus, TableUpdate
from services.table_writer.codec import Header
from services.table_writer.store import TableStore
from services.table_writer.table import Table, bucket_counts
from tests.conftest import NETWORK
from tests.containers.conftest import INTERVAL_S, Stack, wait_healthy
from tests.feedback.helpers import SimulatedAgents, TopicReader

# The first test builds the images when they are not current (minutes when cold).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

SERVERS = {pop: [f"{pop}{i}" for i in (1, 2)] for pop in NETWORK.pop_names}
B_INGRESS = str(NETWORK.pop("b").ingress)
FORWARDABLE = [tier.id for tier in NETWORK.tiers if tier.forwardable]
T = TypeVar("T")


def wait(probe: Callable[[], T | None], deadline_s: float, what: str) -> T:
    end = time.monotonic() + deadline_s
    while True:
        try:
            found = probe()
        except redis.RedisError:
            found = None
        if found:
            return found
        assert time.monotonic() < end, f"not within {deadline_s}s: {what}"
        time.sleep(0.2)


def latest_status(msgs: list[Received]) -> dict[str, PopStatus]:
    return {r.value.pop: r.value for r in msgs}


def policies_for(msgs: list[Received], source: str) -> list[PolicyEvent]:
    return [r.value for r in msgs if r.value.source == source]


def to_b(policy: PolicyEvent) -> dict[int, float]:
    """The policy's share per tier towards b (it must name no other destination)."""
    assert {s.destination for s in policy.shares} <= {"b"}, policy
    return {s.tier: s.share for s in policy.shares if s.share > 0.0}


def away_to_b(table: Table) -> int:
    return sum(1 for b in table if b.away and b.inter_pop and b.secondary == B_INGRESS)


def table_to_b(store: TableStore, tier: int, min_policy: int = 1) -> tuple[Header, Table] | None:
    """a's table of ``tier`` once it carries a policy at least ``min_policy`` with a share to b."""
    found = store.read("a", tier)
    if found is None:
        return None
    header = found[0]
    if header.policy_version < min_policy or header.shares.get("b", 0.0) <= 0.0:
        return None
    return found


def check_table(header: Header, table: Table, policies: TopicReader) -> None:
    """Exactly round(share x 2^N) buckets point at b, the share of the policy it was made from."""
    assert len(table) == 2**header.bits == 256
    made_from = policies.wait_for(
        lambda ms: [p for p in policies_for(ms, "a") if p.version == header.policy_version],
        10,
        f"a's policy v{header.policy_version}",
    )[0]
    assert to_b(made_from)[header.tier] == pytest.approx(header.shares["b"])
    assert away_to_b(table) == bucket_counts(header.shares, len(table))["b"] > 0
    # Everything else stays in a: its own servers are every bucket's primary.
    a_servers = {str(h) for h in NETWORK.pop("a").server_prefixes[0].hosts()}
    assert {b.primary for b in table} <= a_servers


@contextmanager
def readers(stack: Stack) -> Iterator[dict[str, TopicReader]]:
    out = {
        name: TopicReader(stack.kafka, stack.topic(topic), f"{stack.prefix}-read-{name}")
        for name, topic in (
            ("status", t.POP_STATUS),
            ("policies", t.POLICIES),
            ("updates", t.TABLE_UPDATES),
        )
    }
    try:
        yield out
    finally:
        for r in out.values():
            r.close()


@contextmanager
def tables(stack: Stack) -> Iterator[TableStore]:
    client = redis_client.connect(stack.redis)
    try:
        yield TableStore(client, prefix=f"{stack.prefix}:table")
    finally:
        client.close()


def notices_of(header: Header, msgs: list[Received]) -> list[TableUpdate]:
    """The table-updates notices of the table version ``header`` describes."""
    key = (header.pop, header.tier, header.version)
    return [r.value for r in msgs if (r.value.pop, r.value.tier, r.value.version) == key]


def overload_a(agents: SimulatedAgents) -> None:
    agents.set("a", 0.95)
    agents.set("b", 0.3)
    agents.set("c", 0.3)


def shed_and_take(msgs: list[Received]) -> dict[str, PopStatus] | None:
    now = latest_status(msgs)
    states = {pop: status.state for pop, status in now.items()}
    wanted = {"a": PopState.SHED, "b": PopState.CAN_TAKE, "c": PopState.CAN_TAKE}
    return now if states == wanted else None


def test_heartbeats_in_shed_status_policy_and_tables_out(stack: Stack) -> None:
    with (
        readers(stack) as read,
        tables(stack) as store,
        SimulatedAgents(stack.kafka, stack.topic(t.FEEDBACK), SERVERS, INTERVAL_S) as agents,
    ):
        overload_a(agents)
        now = read["status"].wait_for(shed_and_take, 120, "a sheds, b and c can take")
        assert now["a"].rule is not None and now["a"].rule.startswith("combined_over")
        assert now["a"].excess_cores > 0.0 and now["b"].headroom_cores > 0.0
        assert now["a"].capacity_cores == 8.0  # a's two servers, 4 cores each

        policy = read["policies"].wait_for(
            lambda ms: [p for p in policies_for(ms, "a") if to_b(p)], 60, "a policy a -> b"
        )[0]
        assert policy.action in (PolicyAction.NEW, PolicyAction.UPDATE)
        assert policy.reason.trigger_pop == "a"
        assert set(to_b(policy)) <= set(FORWARDABLE)  # premium is never forwarded

        for tier in to_b(policy):
            header, table = wait(partial(table_to_b, store, tier), 30, f"a's t{tier}")
            check_table(header, table, read["policies"])
            # ...and the writer announced that very version, with its buckets away.
            notice = read["updates"].wait_for(
                partial(notices_of, header), 15, f"table-updates for a t{tier} v{header.version}"
            )[0]
            assert notice.policy_version == header.policy_version
            assert notice.buckets_away == {"b": away_to_b(table)}
        # b and c are not shedding: no policy of theirs moves anything.
        assert all(not p.shares for p in policies_for(read["policies"].poll(), "b"))
        assert all(not p.shares for p in policies_for(read["policies"].poll(), "c"))
        assert agents.sent > 0


def kill(stack: Stack, name: str) -> None:
    """SIGKILL through Docker: no clean shutdown, no offsets committed on the way out."""
    wrapped = stack.services[name].get_wrapped_container()
    wrapped.kill(signal="SIGKILL")
    assert wrapped.wait(timeout=30)["StatusCode"] == 137
    wrapped.reload()
    assert wrapped.status == "exited"


def restart(stack: Stack, name: str) -> float:
    """The same container (same command, env and instance id) started again; seconds to
    healthy."""
    c = stack.services[name]
    c.get_wrapped_container().start()
    return wait_healthy(c, 90)


def updates_of_a(msgs: list[Received], tier: int) -> list[TableUpdate]:
    return [r.value for r in msgs if (r.value.pop, r.value.tier) == ("a", tier)]


def test_killed_and_restarted_services_lose_nothing(stack: Stack) -> None:
    tier = FORWARDABLE[0]
    with (
        readers(stack) as read,
        tables(stack) as store,
        SimulatedAgents(stack.kafka, stack.topic(t.FEEDBACK), SERVERS, INTERVAL_S) as agents,
    ):
        # Nobody is overloaded: a's writer writes a's tables from pop-load alone.
        first = wait(lambda: store.read("a", tier), 120, "a's first table")
        assert first[0].policy_version == 0 and away_to_b(first[1]) == 0

        # 1. a's writer dies; the overload comes and the engine decides while it is dead.
        kill(stack, "table-writer-a")
        dead_version = store.current_version("a", tier)
        overload_a(agents)
        read["status"].wait_for(shed_and_take, 120, "a sheds, b and c can take")
        policy = read["policies"].wait_for(
            lambda ms: [p for p in policies_for(ms, "a") if to_b(p).get(tier)], 60, "a -> b"
        )[0]
        assert store.current_version("a", tier) == dead_version  # nobody wrote a's tables
        assert away_to_b(wait(lambda: store.read("a", tier), 5, "a's table")[1]) == 0

        # Back: it reads the policy it missed from its group's offset and goes on from the
        # table in Redis (versions continue; they do not start again at 1).
        restart(stack, "table-writer-a")
        header, table = wait(lambda: table_to_b(store, tier, policy.version), 60, "a's table")
        assert header.version > dead_version
        check_table(header, table, read["policies"])
        read["updates"].wait_for(
            lambda ms: any(u.version == header.version for u in updates_of_a(ms, tier)),
            15,
            "its notice",
        )
        # Notices may repeat (sent again until confirmed) but never go back.
        versions = [u.version for u in updates_of_a(read["updates"].messages, tier)]
        assert versions == sorted(versions), versions

        # 2. The engine dies with the policy in force and comes back: it replays policies.v1,
        # keeps a -> b and goes on with higher versions (a renewal or an update, no cancel).
        before = policies_for(read["policies"].poll(), "a")[-1]
        kill(stack, "policy-engine")
        restart(stack, "policy-engine")
        after = read["policies"].wait_for(
            lambda ms: [p for p in policies_for(ms, "a") if p.version > before.version],
            60,
            "a's next policy",
        )
        for p in after:
            assert p.action is not PolicyAction.CANCEL, p
            assert p.epoch >= before.epoch
            assert to_b(p).get(tier, 0.0) > 0.0
        latest = max(p.version for p in after)
        header, table = wait(lambda: table_to_b(store, tier, latest), 30, "a's table, renewed")
        check_table(header, table, read["policies"])
        assert agents.sent > 0
