"""The sync's pure core: map images of table blobs, diffs, version tracking, leases, backoff,
stats."""

from __future__ import annotations

import dataclasses
import ipaddress as ia
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.bucket import Flag
from schemas.messages import DataplaneStats, TableUpdate
from services.forwarder.layout import Verdict, addr16
from services.forwarder.loader import Count, changed
from services.forwarder.sync import (
    NO_LEASE,
    Backoff,
    Image,
    Lease,
    LeaseRule,
    Refused,
    commit,
    commit_cut,
    cut,
    dataplane_stats,
    forget,
    lease_due,
    local_image,
    lost,
    map_image,
    new_state,
    on_notice,
    plan,
    to_fetch,
)
from services.table_writer.codec import Header, decode_records, encode
from services.table_writer.table import Table, diff
from tests.sync.helpers import blob, entries, entry_bytes, mixed_table, table

BITS = 6


def image_of(t: Table, version: int = 1, bits: int = BITS) -> Image:
    return map_image(*decode_records(blob(t, version, bits)))


def test_image_is_what_the_loader_writes_for_each_entry() -> None:
    t = table(BITS, {"b": 0.25, "c": 0.125})
    header, records = decode_records(blob(t, 1, BITS))
    image = map_image(header, records)
    built = entries(header, records, range(len(t)))
    assert [image[i].tobytes() for i in range(len(t))] == [entry_bytes(built[i]) for i in built]
    away = next(i for i, b in enumerate(t) if b.away and b.secondary_pop == 3)
    row = image[away]
    assert bytes(row["secondary"]) == addr16(ia.ip_address("2001:db8:c::1"))
    assert row["secondary_pop"] == 3
    assert row["flags"] == Flag.VALID | Flag.HAS_SECONDARY | Flag.INTER_POP | Flag.AWAY
    plain = next(i for i, b in enumerate(t) if b.secondary is None and b.primary == "192.0.97.1")
    assert bytes(image[plain]["primary"]) == bytes(10) + b"\xff\xff" + bytes([192, 0, 97, 1])
    assert bytes(image[plain]["secondary"]) == bytes(16)
    assert image[plain]["flags"] == Flag.VALID


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
    st.floats(0.0, 0.5),
)
def test_changed_buckets_are_exactly_the_table_diff(b1: float, c1: float, b2: float, c2: float):
    old = table(BITS, {"b": b1, "c": c1}, now=1.0)
    new = table(BITS, {"b": b2, "c": c2}, now=1.0)
    # modified_at is not in the maps: compare what the data plane sees.
    strip = [dataclasses.replace(b, modified_at=0.0) for b in old]
    want = set(diff(strip, [dataclasses.replace(b, modified_at=0.0) for b in new]))
    assert set(changed(image_of(old), image_of(new, 2)).tolist()) == want


@pytest.mark.parametrize(
    ("with_secondary", "flags"),
    [
        (False, Flag.VALID | Flag.HAS_SECONDARY),  # claims a secondary it does not have
        (False, Flag.VALID | Flag.AWAY),  # away with nowhere to go
        (True, Flag.VALID),  # a secondary the flags do not announce
        (True, Flag.HAS_SECONDARY | Flag.INTER_POP),  # not marked valid
        (True, Flag.VALID | Flag.HAS_SECONDARY | Flag.FROM_PEER),  # a GUE-only bit
        (True, Flag.VALID | Flag.HAS_SECONDARY | 0x40),  # an unknown bit
    ],
)
def test_record_flags_that_are_not_a_buckets_are_refused(with_secondary: bool, flags: int):
    """The flag byte goes to the map as it is, so the sync checks it first."""
    t = table(BITS, {"b": 0.25})
    header, records = decode_records(blob(t, 1, BITS))
    records = records.copy()
    i = next(i for i, b in enumerate(t) if (b.secondary is not None) == with_secondary)
    records["flags"][i] = flags
    with pytest.raises(Refused, match=f"bucket {i}: flags"):
        map_image(header, records)


def test_the_sync_does_not_import_scapy() -> None:
    """The product stays free of the test oracle: model.py and packets.py need scapy."""
    code = "import services.forwarder.sync, sys; print('scapy' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "False"


def test_unchanged_table_writes_nothing_and_empty_maps_get_everything() -> None:
    t = table(BITS, {"b": 0.5})
    assert changed(image_of(t), image_of(t, 2)).size == 0
    empty = np.zeros_like(image_of(t))
    assert changed(empty, image_of(t)).tolist() == list(range(1 << BITS))


def test_versions_followed_up_and_down_never_to_nothing() -> None:
    state = new_state("a", BITS, 4)
    assert to_fetch(state, {0: 3, 1: 0, 2: 1}) == [0, 2]
    state.tiers[0].version = 3
    assert to_fetch(state, {0: 3}) == []
    assert to_fetch(state, {0: 1}) == [0]  # Redis lost its data and a writer began again
    assert to_fetch(state, {0: 0}) == []  # no table at all: the maps keep the last good one
    assert to_fetch(state, {9: 5}) == []  # a tier the maps do not have


def test_notices_trigger_a_read_only_when_newer_and_ours() -> None:
    state = new_state("a", BITS, 4)
    state.tiers[1].version = 4

    def notice(pop: str, tier: int, version: int) -> TableUpdate:
        return TableUpdate(
            pop=pop, tier=tier, version=version, policy_version=1, buckets_changed=1, written_at=1
        )

    assert on_notice(state, notice("a", 1, 5))
    assert not on_notice(state, notice("a", 1, 4))  # replayed or duplicate
    assert not on_notice(state, notice("b", 1, 9))  # another PoP
    assert not on_notice(state, notice("a", 7, 9))  # a tier the maps do not have
    assert state.notices == 2


def test_plan_refuses_what_does_not_fit_and_remembers_it() -> None:
    state = new_state("a", BITS, 4)
    held = np.zeros(1 << BITS, dtype=image_of(table(BITS)).dtype)
    cases = {
        "buckets": blob(table(BITS + 1), 1, BITS + 1),
        "blob is b": blob(table(BITS), 1, BITS, pop="b"),
        "not a popshift table": b"junk" * 10,
    }
    for version, (reason, raw) in enumerate(cases.items(), start=1):
        with pytest.raises(Refused, match=reason):
            plan(state, 0, version, raw, held)
        assert state.tiers[0].refused == version
        assert to_fetch(state, {0: version}) == []  # not fetched again
    assert state.refused == 3
    good = plan(state, 0, 4, blob(table(BITS), 4, BITS), held)
    assert len(good.indices) == 1 << BITS
    commit(state, good)
    assert (state.tiers[0].version, state.buckets_written, state.applied) == (4, 1 << BITS, 1)


def test_address_index_beyond_the_header_is_refused() -> None:
    raw = bytearray(blob(table(BITS), 1, BITS))
    raw[-16:-14] = (40).to_bytes(2, "little")  # the last record's primary
    with pytest.raises(Refused, match="address index"):
        plan(new_state("a", BITS, 4), 0, 1, bytes(raw), image_of(table(BITS)))


def test_lost_and_forget_make_the_next_round_read_the_maps_back() -> None:
    state = new_state("a", BITS, 2)
    p = plan(state, 0, 1, blob(table(BITS), 1, BITS), image_of(table(BITS)))
    commit(state, p)
    assert state.tiers[0].image is not None
    lost(state, 0)
    assert state.tiers[0].image is None and state.tiers[0].version == 0
    commit(state, p)
    forget(state)
    assert to_fetch(state, {0: 1}) == [0] and state.tiers[0].image is None


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 4.0)
    assert b.ready(0.0)
    assert [b.failed(10.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not b.ready(13.9) and b.ready(14.0)
    assert b.succeeded() == 5 and b.ready(0.0)


def test_counters_map_to_the_message_with_untiered_drops() -> None:
    def row(**packets: int) -> dict[Verdict, Count]:
        out = {v: Count(0, 0) for v in Verdict}
        out.update({Verdict[k]: Count(n, n * 100) for k, n in packets.items()})
        return out

    counters = {
        0: row(
            LOCAL=10,
            LOCAL_SELF_SECONDARY=1,
            FWD_INTER=4,
            SECOND_CHANCE_INTER=2,
            SECOND_CHANCE=5,
            RECEIVED_PEER=3,
        ),
        1: row(FWD_INTRA=7, DROP_NO_BUCKET=1, TOO_BIG_ICMP=2),
        None: row(DROP_MALFORMED=5, DROP_BLOCKLIST=6, PASS_NOT_OURS=99),
    }
    stats = dataplane_stats("a", "a-edge1", 12.5, counters)
    DataplaneStats.model_validate_json(stats.model_dump_json())  # what the engine will accept
    t0, t1, untiered = stats.tiers
    assert (t0.tier, t0.local, t0.inter_pop_forward, t0.second_chance_forward) == (0, 11, 4, 2)
    # A second chance inside the PoP is a hop between two servers, not traffic sent out.
    assert t0.received_from_peer == 3 and t0.intra_pop_forward == 5
    assert t1.intra_pop_forward == 7 and t1.dropped["drop_no_bucket"] == 1
    assert t1.dropped["too_big_icmp"] == 2
    assert untiered.tier == 2 and untiered.dropped["drop_blocklist"] == 6
    assert untiered.local == 0 and sum(untiered.dropped.values()) == 11


def test_lease_stages_by_age() -> None:
    rule = LeaseRule(lease_s=15.0, drain_s=120.0)
    assert rule.stage(100.0, 100.0 - 15.0) is Lease.LIVE
    assert rule.stage(100.0, 100.0 - 15.1) is Lease.EXPIRED
    assert rule.stage(100.0, 100.0 - 135.0) is Lease.EXPIRED
    assert rule.stage(100.0, 100.0 - 135.1) is Lease.LOCAL
    assert NO_LEASE.stage(1e9, 0.0) is Lease.LIVE


def test_a_cut_table_keeps_primaries_and_only_the_second_chances_its_stage_allows() -> None:
    table = image_of(mixed_table(BITS))
    flags = table["flags"]
    inter = (flags & Flag.INTER_POP) != 0
    intra = ((flags & Flag.HAS_SECONDARY) != 0) & ~inter
    assert ((flags & Flag.AWAY) != 0).any() and inter.any() and intra.any()
    assert (inter & ((flags & Flag.AWAY) == 0)).any()  # some inter-PoP buckets drain already
    assert local_image(table, Lease.LIVE) is table

    expired = local_image(table, Lease.EXPIRED)
    assert not ((expired["flags"] & Flag.AWAY) != 0).any()  # new connections stay
    assert np.array_equal(expired["flags"], flags & ~np.uint8(Flag.AWAY))
    for field in ("primary", "secondary", "secondary_pop"):  # every second chance kept
        assert np.array_equal(expired[field], table[field])

    local = local_image(table, Lease.LOCAL)
    assert np.array_equal(local["primary"], table["primary"])
    assert not ((local["flags"] & (Flag.AWAY | Flag.INTER_POP)) != 0).any()
    assert not local["secondary"][inter].any() and not local["secondary_pop"].any()
    assert (local["flags"][inter] == Flag.VALID).all()
    assert np.array_equal(local[intra], table[intra])  # intra-PoP second chance kept
    assert np.array_equal(local_image(expired, Lease.LOCAL), local)  # a cut of a cut
    map_image(*decode_records(blob(mixed_table(BITS), 1, BITS)))  # the cut is a valid table


def test_an_unrenewed_tier_is_cut_in_stages_and_a_renewal_restores_it() -> None:
    rule = LeaseRule(lease_s=15.0, drain_s=120.0)
    state = new_state("a", BITS, 2, now=1000.0)
    raw = blob(mixed_table(BITS), 1, BITS)  # written_at = 1.0: long expired
    assert lease_due(state, 1010.0, rule) == {}  # a fresh process grants one lease
    p = plan(state, 0, 1, raw, np.zeros(1 << BITS, image_of(table(BITS)).dtype), 1010.0, rule)
    assert p.lease is Lease.LOCAL and np.array_equal(p.image, local_image(p.table, Lease.LOCAL))
    commit(state, p)
    assert state.lease_expiries == 1 and state.tiers[0].renewed_at == 1.0
    assert lease_due(state, 1016.0, rule) == {1: Lease.EXPIRED}  # no table known for tier 1
    held = image_of(mixed_table(BITS))
    table_1, image_1 = cut(state.tiers[1], Lease.EXPIRED, held)
    assert table_1 is held and np.array_equal(image_1, local_image(held, Lease.EXPIRED))
    assert commit_cut(state, 1, Lease.EXPIRED, table_1, image_1, written=3)
    assert state.lease_expiries == 2 and lease_due(state, 1100.0, rule) == {}
    assert lease_due(state, 1136.0, rule) == {1: Lease.LOCAL}
    assert not commit_cut(state, 1, Lease.LOCAL, *cut(state.tiers[1], Lease.LOCAL, image_1), 5)
    assert state.lease_expiries == 2  # deeper, not again
    empty = new_state("a", BITS, 1, now=0.0)
    assert not commit_cut(empty, 0, Lease.EXPIRED, held, held, written=0)  # never written
    forget(state)
    assert state.tiers[1].renewed_at == 1000.0 and state.tiers[1].lease is Lease.LOCAL
    fresh = Header("a", 0, 2, 2, BITS, 1200.0)
    renewed = plan(state, 0, 2, encode(mixed_table(BITS), fresh), p.image, 1201.0, rule)
    assert renewed.lease is Lease.LIVE and np.array_equal(renewed.image, renewed.table)
    assert len(renewed.indices) > 0
