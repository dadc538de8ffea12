"""Forwarding tables: bucket counts, LRM order, drains, primaries, invariants, the writer."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popshift.admission import Refused
from popshift.network import load_network
from popshift.silence import BusSilence
from schemas.bucket import Bucket
from schemas.messages import PolicyAction, PolicyEvent, PolicyReason, PopLoad, Share
from schemas.messages import ServerLoad as SL
from services.table_writer import codec
from services.table_writer.table import (
    Peer,
    Server,
    TableInvariantError,
    apply_policy,
    bucket_counts,
    check_invariants,
    diff,
    forwarded_counts,
    new_table,
    rebalance_primaries,
    server_quotas,
)
from services.table_writer.writer import (
    MAX_CLOCK_SKEW_S,
    MAX_VERSION_JUMP,
    PolicyRejected,
    WriterState,
    adopt,
    commit,
    new_state,
    on_heard,
    on_policy,
    on_servers,
    on_tick,
)

REPO = Path(__file__).resolve().parents[2]
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")
PEERS = {"b": Peer("b", 2, "10.100.2.1"), "c": Peer("c", 3, "10.100.3.1")}
SERVERS = [Server("192.0.2.1", 8.0), Server("192.0.2.2", 8.0), Server("192.0.2.3", 16.0)]
LOCAL = {s.address for s in SERVERS}
DRAIN = 60.0


def forwarding(b: Bucket) -> int | None:
    return b.secondary_pop if b.away else None


def check(table, shares, bits, local=LOCAL) -> None:
    check_invariants(table, bits=bits, self_id=1, shares=shares, peers=PEERS, local_addresses=local)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(6, 10),
    st.lists(st.tuples(st.floats(0.0, 0.25), st.floats(0.0, 0.2)), min_size=1, max_size=8),
)
def test_changed_buckets_equal_the_change_in_share(bits: int, rounds) -> None:
    size = 1 << bits
    table = new_table(SERVERS, bits, now=0.0)
    shares: dict[str, float] = {}
    for step, (to_b, to_c) in enumerate(rounds, start=1):
        new_shares = {"b": to_b, "c": to_c}
        out = apply_policy(table, new_shares, PEERS, now=float(step), drain_period_s=DRAIN)
        check(out, new_shares, bits)
        changed = sum(forwarding(a) != forwarding(b) for a, b in zip(table, out, strict=True))
        expected = sum(abs(new_shares[d] - shares.get(d, 0.0)) * size for d in new_shares)
        assert abs(changed - expected) <= len(new_shares), (changed, expected)
        want = bucket_counts(new_shares, size)
        assert changed == sum(
            abs(want.get(d, 0) - bucket_counts(shares, size).get(d, 0)) for d in PEERS
        )
        table, shares = out, new_shares


def test_least_recently_modified_buckets_change_first() -> None:
    bits = 4
    table = [
        dataclasses.replace(b, modified_at=float(m))
        for b, m in zip(
            new_table(SERVERS, bits, 0.0),
            [9, 3, 7, 1, 15, 2, 8, 6, 14, 0, 12, 5, 4, 11, 10, 13],
            strict=True,
        )
    ]
    up = apply_policy(table, {"b": 0.25}, PEERS, now=100.0, drain_period_s=DRAIN)
    assert sorted(i for i, b in enumerate(up) if b.away) == [1, 3, 5, 9]  # modified at 3,1,2,0
    # Those four are now the most recent; the next destination takes the next-oldest ones.
    up = apply_policy(up, {"b": 0.25, "c": 0.125}, PEERS, now=101.0, drain_period_s=DRAIN)
    assert sorted(i for i, b in enumerate(up) if b.away and b.secondary_pop == 3) == [11, 12]
    # Shrinking b drains its least recently modified buckets: all four share t=100, index wins.
    down = apply_policy(up, {"b": 0.125, "c": 0.125}, PEERS, now=102.0, drain_period_s=DRAIN)
    assert sorted(i for i, b in enumerate(down) if b.away and b.secondary_pop == 2) == [5, 9]


def test_draining_keeps_the_secondary_until_the_drain_period_ends() -> None:
    bits = 8
    table = new_table(SERVERS, bits, 0.0)
    up = apply_policy(table, {"b": 0.5}, PEERS, now=10.0, drain_period_s=DRAIN)
    down = apply_policy(up, {"b": 0.25}, PEERS, now=20.0, drain_period_s=DRAIN)
    draining = [i for i, b in enumerate(down) if b.secondary == "10.100.2.1" and not b.away]
    assert len(draining) == 64
    for i in draining:
        b = down[i]
        assert b.inter_pop and b.secondary_pop == 2 and not b.away
        assert b.modified_at == 20.0 and b.primary == up[i].primary
    # Still within the drain period: nothing changes.
    later = apply_policy(down, {"b": 0.25}, PEERS, now=20.0 + DRAIN - 1, drain_period_s=DRAIN)
    assert diff(down, later) == {}
    # Going up again before the drain ended re-uses the buckets still draining to b.
    again = apply_policy(down, {"b": 0.3}, PEERS, now=30.0, drain_period_s=DRAIN)
    reactivated = [i for i, (a, b) in enumerate(zip(down, again, strict=True)) if a != b]
    assert set(reactivated) <= set(draining) and len(reactivated) == round(0.3 * 256) - 64
    # After the period the secondary is cleared: those buckets are plain local ones again.
    done = apply_policy(down, {"b": 0.25}, PEERS, now=20.0 + DRAIN, drain_period_s=DRAIN)
    changes = diff(down, done)
    assert sorted(changes) == draining
    assert all(e.secondary is None and not e.away for e in changes.values())
    check(done, {"b": 0.25}, bits)


def test_adding_and_removing_servers_moves_only_what_must_move() -> None:
    bits = 12
    size = 1 << bits
    table = new_table(SERVERS, bits, 0.0)
    assert server_quotas(SERVERS, size) == {"192.0.2.1": 1024, "192.0.2.2": 1024, "192.0.2.3": 2048}
    table = apply_policy(table, {"b": 0.1}, PEERS, now=1.0, drain_period_s=DRAIN)
    bigger = [*SERVERS, Server("192.0.2.4", 32.0)]
    grown = rebalance_primaries(table, bigger, now=2.0)
    moved = [i for i, (a, b) in enumerate(zip(table, grown, strict=True)) if a.primary != b.primary]
    assert len(moved) == size // 2 == sum(b.primary == "192.0.2.4" for b in grown)
    for i in moved:
        if table[i].inter_pop:  # a forwarded bucket keeps its remote secondary
            assert grown[i].secondary == table[i].secondary and grown[i].away
        else:  # the old primary keeps its connections by second chance
            assert grown[i].secondary == table[i].primary and not grown[i].away
    untouched = set(range(size)) - set(moved)
    assert all(table[i] == grown[i] for i in untouched)
    # Moves prefer buckets with no secondary in use.
    assert sum(table[i].inter_pop for i in moved) == 0
    local = LOCAL | {"192.0.2.4"}
    check(grown, {"b": 0.1}, bits, local)

    shrunk = rebalance_primaries(grown, bigger[1:], now=3.0)
    moved = [
        i for i, (a, b) in enumerate(zip(grown, shrunk, strict=True)) if a.primary != b.primary
    ]
    assert sorted(moved) == [i for i, b in enumerate(grown) if b.primary == "192.0.2.1"]
    assert forwarded_counts(shrunk) == forwarded_counts(table)
    check(shrunk, {"b": 0.1}, bits, local)
    # The removed server's old buckets drain away from it after the drain period.
    expired = apply_policy(shrunk, {"b": 0.1}, PEERS, now=3.0 + DRAIN, drain_period_s=DRAIN)
    assert not any(b.secondary == "192.0.2.1" for b in expired)


def test_invariants_refuse_a_bad_table_loudly() -> None:
    bits = 4
    good = apply_policy(new_table(SERVERS, bits, 0.0), {"b": 0.25}, PEERS, 1.0, DRAIN)
    check(good, {"b": 0.25}, bits)
    with pytest.raises(TableInvariantError, match=r"4 buckets for share 0\.5"):
        check(good, {"b": 0.5}, bits)
    bad = list(good)
    bad[0] = Bucket(good[0].primary, "10.100.1.1", True, True, 1, 2.0)
    with pytest.raises(TableInvariantError, match="this PoP itself"):
        check(bad, {"b": 0.25}, bits)
    bad = list(good)
    bad[0] = Bucket(good[0].primary, "10.100.3.1", modified_at=2.0)
    with pytest.raises(TableInvariantError, match="not a local server") as info:
        check(bad, {"b": 0.25}, bits)
    assert info.value.violations == [
        "bucket 0: intra-PoP secondary 10.100.3.1 is not a local server"
    ]
    with pytest.raises(TableInvariantError, match="may not be forwarded"):
        check_invariants(
            good,
            bits=bits,
            self_id=1,
            shares={"b": 0.25},
            peers=PEERS,
            local_addresses=LOCAL,
            forwardable=False,
        )
    with pytest.raises(TableInvariantError, match="without a share"):
        check(good, {}, bits)


def test_full_size_table_n16_round_trips_through_the_codec_quickly() -> None:
    bits = 16
    started = time.perf_counter()
    table = new_table(SERVERS, bits, 0.0)
    table = apply_policy(table, {"b": 0.3, "c": 0.1}, PEERS, 1.0, DRAIN)
    check(table, {"b": 0.3, "c": 0.1}, bits)
    assert forwarded_counts(table) == {2: round(0.3 * 65536), 3: round(0.1 * 65536)}
    header = codec.Header("a", 0, 1, 7, bits, 1.0, {"b": 0.3, "c": 0.1})
    blob = codec.encode(table, header)
    assert len(blob) > 16 * 65536
    got_header, got = codec.decode(blob)
    assert got == table and got_header.policy_version == 7 and got_header.shares["b"] == 0.3
    down = apply_policy(table, {"b": 0.2, "c": 0.1}, PEERS, 2.0, DRAIN)
    changes = diff(table, down)
    assert len(changes) == round(0.1 * 65536)
    assert time.perf_counter() - started < 10.0
    with pytest.raises(codec.BadTableBlob):
        codec.decode(b"XXXX" + blob[4:])


def test_bucket_counts_round_and_fit_the_table() -> None:
    assert bucket_counts({"b": 0.3, "c": 0.0}, 16) == {"b": 5}
    # Three thirds of 16 round to 5+5+5; halves of 3 round to 2+2 = 4 > 3: one gives back.
    assert bucket_counts({"b": 1 / 3, "c": 1 / 3, "d": 1 / 3}, 16) == {"b": 5, "c": 5, "d": 5}
    counts = bucket_counts({"b": 0.5, "c": 0.5}, 3)
    assert sum(counts.values()) == 3 and sorted(counts.values()) == [1, 2]


# --- the per-PoP writer state machine -----------------------------------------------------


def policy(
    version: int,
    *shares: tuple[int, str, float],
    source: str = "a",
    action: PolicyAction = PolicyAction.UPDATE,
    issued_at: float | None = None,
    lease: float | None = None,
    epoch: int = 0,
) -> PolicyEvent:
    at = float(version) if issued_at is None else issued_at
    return PolicyEvent(
        action=action,
        source=source,
        version=version,
        epoch=epoch,
        issued_at=at,
        expires_at=None if lease is None else at + lease,
        shares=[Share(tier=t, destination=d, share=x) for t, d, x in shares],
        reason=PolicyReason(trigger_pop=source, rule="test"),
    )


def pop_load(*servers: tuple[str, float, bool]) -> PopLoad:
    return PopLoad(
        pop="a",
        at=1.0,
        servers=[
            SL(server=f"s{i}", address=a, capacity_cores=c, utilisation=0.5, healthy=h)
            for i, (a, c, h) in enumerate(servers)
        ],
        healthy_capacity_cores=sum(c for _, c, h in servers if h),
        combined_load_cores=1.0,
    )


def test_writer_applies_policies_and_refuses_what_it_must_not_apply() -> None:
    state = new_state(NETWORK, "a", bits=8, drain_period_s=DRAIN, renew_s=float("inf"))
    assert on_policy(state, policy(1, (0, "b", 0.25)), 1.0) == []  # no servers yet
    writes = on_servers(
        state, pop_load(("10.100.1.11", 8.0, True), ("10.100.1.12", 8.0, False)), 2.0
    )
    assert [w.tier for w in writes] == [0, 1, 2] and all(w.version == 1 for w in writes)
    assert forwarded_counts(writes[0].table) == {2: 64}
    assert all(b.primary == "10.100.1.11" for b in writes[0].table)
    for w in writes:
        commit(state, w)
    writes = on_policy(state, policy(2, (0, "b", 0.125), (1, "b", 0.5)), 3.0)
    assert [(w.tier, w.version, len(w.changed)) for w in writes] == [(0, 2, 32), (1, 2, 128)]
    for w in writes:
        commit(state, w)
    assert on_policy(state, policy(2, (0, "b", 0.9)), 4.0) == []  # a replay changes nothing
    for bad, error, match in [
        (policy(3, (2, "b", 0.1)), Refused, "tier not forwardable: tier 2 .premium."),
        (policy(3, (0, "zzz", 0.1)), Refused, "unknown pop: destination 'zzz'"),
        (
            policy(3, (0, "c", 0.1)),
            Refused,
            "latency bound: a->c is 45 ms, tier 0 .bulk. allows 30",
        ),
        (policy(3, (0, "a", 0.1), source="b"), PolicyRejected, "policy of b"),
    ]:
        with pytest.raises(error, match=match):
            on_policy(state, bad, 5.0)
    assert state.policy_version == 2
    cancel = on_policy(state, policy(4, action=PolicyAction.CANCEL), 6.0)
    assert [w.tier for w in cancel] == [0, 1]
    assert all(not forwarded_counts(w.table) for w in cancel)
    for w in cancel:
        commit(state, w)
    assert on_tick(state, 3.0 + DRAIN - 1) == []
    # Drained at t=3 (b: 0.25 -> 0.125) and at t=6 (the cancel): each clears after its period.
    first = on_tick(state, 3.0 + DRAIN)
    assert [(w.tier, len(w.changed)) for w in first] == [(0, 32)]
    commit(state, first[0])
    second = on_tick(state, 6.0 + DRAIN)
    assert [(w.tier, len(w.changed)) for w in second] == [(0, 32), (1, 128)]
    for w in second:
        commit(state, w)
    assert all(b.secondary is None for t in state.tables.values() for b in t.table)


def test_writer_renews_every_table_before_its_lease_runs_out() -> None:
    """The sync follows a table only for a lease after written_at: a live writer renews it."""
    state = new_state(NETWORK, "a", bits=6, drain_period_s=DRAIN, renew_s=5.0)
    for w in on_servers(state, pop_load(("10.100.1.11", 8.0, True)), 100.0):
        commit(state, w)
    for w in on_policy(state, policy(1, (0, "b", 0.25)), 101.0):
        commit(state, w)
    assert on_tick(state, 104.9) == []
    renewals = on_tick(state, 105.0)  # tiers 1 and 2 were written at t=100, tier 0 at t=101
    assert [(w.tier, w.version, w.changed, w.written_at) for w in renewals] == [
        (1, 2, [], 105.0),
        (2, 2, [], 105.0),
    ]
    assert all(w.table == state.tables[w.tier].table for w in renewals)  # the same records
    for w in renewals:
        commit(state, w)
    assert [(w.tier, w.version) for w in on_tick(state, 106.0)] == [(0, 3)]
    # Not committed (the write failed): the next tick offers the renewal again.
    assert [(w.tier, w.version) for w in on_tick(state, 107.0)] == [(0, 3)]


# --- policy leases and refusals -----------------------------------------------------------


def leased_writer() -> WriterState:
    state = new_state(NETWORK, "a", bits=8, drain_period_s=DRAIN, renew_s=float("inf"))
    for w in on_servers(state, pop_load(("10.100.1.11", 8.0, True)), 100.0):
        commit(state, w)
    return state


def away_to(state: WriterState, pop_id: int) -> int:
    return forwarded_counts(state.tables[0].table).get(pop_id, 0)


def draining_to(state: WriterState, pop_id: int) -> int:
    return sum(1 for b in state.tables[0].table if b.secondary_pop == pop_id and not b.away)


def test_a_policy_whose_lease_runs_out_drains_back_to_local_and_says_so() -> None:
    state = leased_writer()
    for w in on_policy(state, policy(1, (0, "b", 0.25), issued_at=100.0, lease=3.0), 100.0):
        commit(state, w)
    assert away_to(state, 2) == 64 and state.lapses == 0
    # A renewal (same shares, new version and lease) changes no table but extends the lease.
    assert on_policy(state, policy(2, (0, "b", 0.25), issued_at=102.0, lease=3.0), 102.0) == []
    assert on_tick(state, 104.9) == []
    lapsed = on_tick(state, 105.0)
    assert [(w.tier, len(w.changed)) for w in lapsed] == [(0, 64)]
    for w in lapsed:
        commit(state, w)
    assert (state.lapsed_version, state.lapses) == (2, 1)
    assert away_to(state, 2) == 0 and draining_to(state, 2) == 64  # second chance kept
    assert on_tick(state, 106.0) == [] and state.lapses == 1  # said once
    drained = on_tick(state, 105.0 + DRAIN)
    for w in drained:
        commit(state, w)
    assert draining_to(state, 2) == 0
    # A newer policy is in force again.
    for w in on_policy(state, policy(3, (0, "b", 0.125), issued_at=200.0, lease=3.0), 200.0):
        commit(state, w)
    assert away_to(state, 2) == 32 and state.lapsed_version is None


def test_a_lease_counts_from_arrival_and_a_stale_replay_lapses_at_once() -> None:
    # The engine's clock 20 s ahead of the writer's: the policy still lives its 3 s here.
    state = leased_writer()
    on_policy(state, policy(1, (0, "b", 0.25), issued_at=120.0, lease=3.0), 100.0)
    assert state.lease_until == pytest.approx(103.0)
    # A policy that expired long ago (a dead engine's last word, replayed): local at once.
    state = leased_writer()
    for w in on_policy(state, policy(1, (0, "b", 0.25), issued_at=10.0, lease=3.0), 100.0):
        commit(state, w)
    assert away_to(state, 2) == 0 and (state.lapsed_version, state.lapses) == (1, 1)
    # Replayed within the skew of its expiry: in force until expires_at + skew at most.
    state = leased_writer()
    on_policy(state, policy(1, (0, "b", 0.25), issued_at=69.0, lease=3.0), 100.0)
    assert state.lease_until == pytest.approx(72.0 + MAX_CLOCK_SKEW_S)


def test_adopted_tables_take_the_lease_of_their_replayed_policy() -> None:
    state = new_state(NETWORK, "a", bits=8, drain_period_s=DRAIN, renew_s=float("inf"))
    table = new_table([Server("10.100.1.11", 8.0)], 8, 0.0)
    table = apply_policy(table, {"b": 0.25}, {p.name: p for p in state.peers.values()}, 0.0, DRAIN)
    adopt(state, 0, table, version=5, policy_version=7, shares={"b": 0.25})
    state.servers = [Server("10.100.1.11", 8.0)]
    assert on_policy(state, policy(7, (0, "b", 0.25), issued_at=100.0, lease=3.0), 100.0) == []
    assert on_policy(state, policy(7, (0, "b", 0.25), issued_at=100.0, lease=3.0), 101.0) == []
    assert state.lease_until == pytest.approx(103.0)
    assert [len(w.changed) for w in on_tick(state, 103.0) if w.tier == 0] == [64]


def test_absurd_versions_and_future_policies_are_refused() -> None:
    state = leased_writer()
    # The first policy after a start may carry any sane version (the engine ran long before).
    on_policy(state, policy(5_000_000, (0, "b", 0.25), issued_at=100.0), 100.0)
    assert state.policy_version == 5_000_000
    for bad, match in [
        (policy(2**63 - 1, issued_at=100.0), "absurd"),
        (policy(5_000_000 + MAX_VERSION_JUMP + 1, issued_at=100.0), "absurdly far beyond"),
        (policy(5_000_001, issued_at=100.0 + MAX_CLOCK_SKEW_S + 1.0), "in the future"),
    ]:
        with pytest.raises(PolicyRejected, match=match):
            on_policy(state, bad, 100.0)
    assert state.policy_version == 5_000_000  # a refused policy leaves no trace
    on_policy(state, policy(5_000_001, issued_at=100.0 + 29.0), 100.0)
    assert state.policy_version == 5_000_001
    # The allowed jump grows with the time since the last policy (renewals of every PoP).
    on_policy(state, policy(5_000_001 + MAX_VERSION_JUMP + 10_000, issued_at=102.0), 102.0)
    assert state.policy_version == 5_000_001 + MAX_VERSION_JUMP + 10_000


def test_a_new_epoch_wins_and_a_deposed_engines_newer_policy_is_refused() -> None:
    state = leased_writer()
    for w in on_policy(state, policy(10, (0, "b", 0.25), issued_at=100.0, epoch=1), 100.0):
        commit(state, w)
    # The old leader published v11..v12 after its successor read the topic; then the successor
    # (epoch 2) issues v11: the new epoch wins although its version is not higher.
    for w in on_policy(state, policy(12, (0, "b", 0.5), issued_at=101.0, epoch=1), 101.0):
        commit(state, w)
    assert away_to(state, 2) == 128
    for w in on_policy(state, policy(11, (0, "b", 0.125), issued_at=102.0, epoch=2), 102.0):
        commit(state, w)
    assert (state.epoch, state.policy_version, away_to(state, 2)) == (2, 11, 32)
    # The deposed leader still talking: a newer version from epoch 1 is refused, loudly...
    with pytest.raises(PolicyRejected, match="deposed"):
        on_policy(state, policy(13, (0, "c", 0.5), issued_at=103.0, epoch=1), 103.0)
    # ...while its old messages, delivered again, are just old.
    assert on_policy(state, policy(10, (0, "b", 0.25), issued_at=100.0, epoch=1), 103.0) == []
    assert (state.epoch, state.policy_version, away_to(state, 2)) == (2, 11, 32)
    with pytest.raises(PolicyRejected, match="absurd"):
        on_policy(state, policy(12, issued_at=103.0, epoch=2**62), 103.0)


def writer_with_a_lease(grace_s: float) -> WriterState:
    """A quarter of tier 0 to b from t=100, on a 3 s lease; a bus silent after 2 s."""
    state = leased_writer()
    state.silence = BusSilence(silence_s=2.0, grace_s=grace_s)
    for w in on_policy(state, policy(1, (0, "b", 0.25), issued_at=100.0, lease=3.0), 100.0):
        commit(state, w)
    return state


def test_a_silent_bus_holds_the_lease_for_the_grace_and_a_live_one_lets_it_lapse() -> None:
    # Kafka away: nothing heard from t=101; the policy (lease 3 s from 100) is held meanwhile.
    state = writer_with_a_lease(grace_s=20.0)
    on_heard(state, 101.0)
    for t in range(102, 120):
        assert on_tick(state, float(t)) == [] and state.lapses == 0, t
    on_heard(state, 120.0)  # the bus is back, the engine renews
    on_policy(state, policy(2, (0, "b", 0.25), issued_at=120.0, lease=3.0), 120.0)
    assert on_tick(state, 121.0) == [] and away_to(state, 2) == 64
    # The engine dead, the bus alive (pop-load keeps coming): lapses when the lease ends.
    for heard_at in (121.5, 122.5, 123.0):
        on_heard(state, heard_at)
    assert [len(w.changed) for w in on_tick(state, 123.0) if w.tier == 0] == [64]
    assert state.lapses == 1
    # Engine and bus silent together: the lease ends at most the grace later.
    state = writer_with_a_lease(grace_s=20.0)
    on_heard(state, 100.0)
    lapsed_at = 0
    for t in range(101, 200):
        on_tick(state, float(t))
        if state.lapses:
            lapsed_at = t
            break
    assert 100 + 3 + 20 <= lapsed_at <= 100 + 3 + 20 + 2


def test_a_renewal_held_up_by_a_kafka_outage_is_not_taken_for_a_dead_engines_last_word() -> None:
    state = writer_with_a_lease(grace_s=60.0)
    on_heard(state, 100.5)
    for t in range(101, 150):  # Kafka away; the engine's renewal of t=101 waits in its queue
        on_tick(state, float(t))
    on_heard(state, 150.0)
    # Issued at 101, expired (104 + 30 s skew) long before it arrives: the outage held it up.
    on_policy(state, policy(2, (0, "b", 0.25), issued_at=101.0, lease=3.0), 150.0)
    assert on_tick(state, 150.5) == [] and state.lapses == 0 and away_to(state, 2) == 64
    assert state.lease_until == pytest.approx(153.0)


def test_when_the_bus_returns_the_engine_has_a_full_lease_to_renew() -> None:
    state = writer_with_a_lease(grace_s=60.0)
    on_heard(state, 101.5)  # renewed at 100 (3 s), heard last at 101.5, then Kafka away
    for t in range(102, 150):
        on_tick(state, float(t))
    for back in (150.0, 151.0, 152.0, 152.9):  # pop-load again; the engine's inputs are not back
        on_heard(state, back)
        on_tick(state, back)
    assert state.lapses == 0  # without the full lease: 103 + 48.5 held = 151.5, lapsed
    on_heard(state, 153.0)
    on_tick(state, 153.0)
    assert state.lapses == 1  # no renewal within a full lease of the bus's return
