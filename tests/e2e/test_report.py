"""The scenario's checks, windows, times and timeline on hand-made runs (pure, no root), and
the bucket prediction they rest on against the real edge program (root)."""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path

import pytest

from lab import checks, record, report, work
from lab.app.results import Kind, Outcome, Record
from schemas.bucket import Bucket, Flag
from services.forwarder import packets
from services.forwarder.layout import GueHeader, XdpAction
from services.forwarder.loader import Forwarder, Role
from services.forwarder.types import TableState
from tests.lab.conftest import require_root


def short(region: str, start: float, pop: str, outcome: Outcome = Outcome.OK) -> record.Traffic:
    return record.Traffic(
        region, "main", Record(Kind.SHORT, start, 0.01, outcome, pop=pop, server=f"{pop}-s1")
    )


def long(
    region: str, start: float, end: float, pop: str, tag: str = "main", ok: bool = True
) -> record.Traffic:
    outcome = Outcome.OK if ok else Outcome.RESET
    rec = Record(Kind.LONG, start, end - start, outcome, pop=pop, server=f"{pop}-s1",
                 exchanges=int((end - start) * 10), servers_seen=1)  # fmt: skip
    return record.Traffic(region, tag, rec)


def policy(t: float, source: str, shares: dict[str, float]) -> record.PolicyRecord:
    return record.PolicyRecord(t, source, "update" if shares else "cancel", shares, 1, "why")


def sample(
    t: float, away: int = 0, shares: dict[str, dict[str, float]] | None = None
) -> record.Sample:
    return record.Sample(
        t=t,
        util={"a": 0.9, "b": 0.5, "c": 0.2},
        state={"a": "shed", "b": "neutral", "c": "can_take"},
        shares=shares or {},
        away={"a": {"b": away} if away else {}, "b": {}, "c": {}},
        draining={"a": 0, "b": 0, "c": 0},
    )


def counters(**per_node: dict[str, int]) -> dict[str, dict[str, int]]:
    return {node: dict(values) for node, values in per_node.items()}


def base() -> record.Result:
    r = record.Result(epoch=1000.0, pops=["a", "b", "c"], table_bits=8)
    r.marks = {"load_on": 10.0, "load_off": 50.0, "cancel": 60.0, "late_longs_off": 68.0}
    return r


def test_check_share_within_three_points_needs_enough_samples() -> None:
    r = base()
    r.traffic = [short("a", 30 + i * 0.001, "b" if i % 4 == 0 else "a") for i in range(4000)]
    w = checks.Window(30.0, 40.0, 0.25, 64 / 256)
    assert checks.check_share(r, "a", "b", [w]).ok
    assert not checks.check_share(r, "a", "b", [checks.Window(30.0, 40.0, 0.30, 77 / 256)]).ok
    few = checks.Window(30.0, 30.5, 0.25, 0.25)  # 500 connections: too few
    assert not checks.check_share(r, "a", "b", [few]).ok
    assert not checks.check_share(r, "a", "b", []).ok


def test_enough_samples_make_three_points_three_standard_deviations() -> None:
    for share in (0.1, 0.25, 0.5):
        n = checks.min_samples(share, 0.03)
        assert 3 * (share * (1 - share) / n) ** 0.5 <= 0.03
    assert checks.min_samples(0.5, 0.03) == 2501


def test_check_share_pools_windows_weighted_by_their_connections() -> None:
    r = base()
    r.traffic = [short("a", 20 + i * 0.005, "b" if i % 5 == 0 else "a") for i in range(2000)]
    r.traffic += [short("a", 40 + i * 0.005, "b" if i % 2 == 0 else "a") for i in range(2000)]
    windows = [checks.Window(20.0, 30.0, 0.2, 51 / 256), checks.Window(40.0, 50.0, 0.5, 0.5)]
    check = checks.check_share(r, "a", "b", windows)
    assert check.ok, check.detail
    assert "35.0% of 4000" in check.detail


def test_table_windows_start_once_the_table_shows_the_share() -> None:
    r = base()
    r.policies = [policy(20.0, "a", {"b": 0.25}), policy(30.0, "a", {}), policy(35.0, "a", {})]
    away = list(range(64))
    r.tables = [
        record.TableRecord(10.0, "a", {}, 10.0),
        record.TableRecord(20.6, "a", {"b": away[:10]}, 20.1),  # half-written: not yet
        record.TableRecord(21.1, "a", {"b": away}, 20.6),
        record.TableRecord(30.5, "a", {}, 30.0),
    ]
    assert checks.table_windows(r, "a", "b", 10.0, 50.0, settle_s=3.0) == [
        checks.Window(24.1, 30.0, 0.25, 0.25)
    ]


def _addresses(r: record.Result) -> None:
    r.addresses = {"vip": "10.200.0.1", "client-a": "10.10.1.2", "client-b": "10.10.2.2"}


@pytest.mark.root
def test_the_edge_program_sends_each_connection_where_the_lab_predicts() -> None:
    """The placement check trusts `bucket_of` and `expected_pop`; here the real edge program
    (BPF_PROG_TEST_RUN, the lab's table size) forwards SYNs of the same 5-tuples. Its table
    names each bucket in the bucket's primary (10.99.0.<bucket>), the GUE destination, and
    sends some buckets away to PoP b (AWAY and b as the secondary in the GUE header, which the
    server follows for a new connection): both are what the lab predicted."""
    require_root()
    r = base()
    _addresses(r)
    bits, ports = r.table_bits, range(30000, 30400)
    away = sorted({checks.bucket_of(r, "a", port) for port in ports[:40]})
    r.tables = [record.TableRecord(0.0, "a", {"b": away}, 0.0)]
    r.samples = [sample(0.0), sample(10.0)]
    b_ingress = "10.100.2.1"
    st = TableState(bucket_bits=bits, vips={ipaddress.ip_network(r.addresses["vip"]): 0})
    for i in range(1 << bits):
        own = Bucket(primary=f"10.99.0.{i}")
        sent = Bucket(own.primary, b_ingress, inter_pop=True, away=True, secondary_pop=2)
        st.table[(0, i)] = sent if i in away else own
    fwd = Forwarder.open(Role.EDGE, f"t_lab_{uuid.uuid4().hex[:8]}", defines={"BUCKET_BITS": bits})
    try:
        fwd.configure(packets.EDGE_CFG)
        fwd.load_state(st)
        seen: dict[str, int] = {}
        for port in ports:
            syn = packets.client(src=r.addresses["client-a"], dst=r.addresses["vip"],
                                 sport=port, dport=80)  # fmt: skip
            action, out = fwd.test_run(bytes(syn))
            assert action is XdpAction.TX
            primary = str(ipaddress.IPv4Address(out[30:34]))  # the outer IPv4 destination
            gue = GueHeader.from_buffer_copy(out, 42)  # after Ethernet, outer IPv4 and UDP
            to_b = bool(gue.priv_flags & Flag.AWAY) and gue.secondary_pop == 2
            bucket = checks.bucket_of(r, "a", port)
            pop = checks.expected_pop(r, "a", 5.0, 5.0, bucket, margin_s=1.0)
            assert (primary, to_b) == (f"10.99.0.{bucket}", pop == "b"), port
            seen[pop] = seen.get(pop, 0) + 1
    finally:
        fwd.unpin()
        fwd.close()
    assert seen.get("b", 0) >= 40 and seen.get("a", 0) > 200, seen
    assert len({checks.bucket_of(r, "a", port) for port in range(1024, 4096)}) == 1 << bits


def test_placement_check_predicts_each_connection_from_its_bucket() -> None:
    r = base()
    _addresses(r)
    ports = range(20000, 20400)
    away = sorted({checks.bucket_of(r, "a", p) for p in ports[:40]})
    r.tables = [
        record.TableRecord(5.0, "a", {}, 5.0),
        record.TableRecord(20.3, "a", {"b": away}, 19.8),
    ]
    r.samples = [sample(0.0), sample(60.0)]

    def conn(i: int, port: int, pop: str) -> record.Traffic:
        start = 10.0 + i * 0.1
        return record.Traffic("a", "main", Record(Kind.SHORT, start, 0.01, Outcome.OK, pop=pop,
                                               server=f"{pop}-s1", sport=port))  # fmt: skip

    def where(i: int, port: int) -> str:
        return "b" if 10.0 + i * 0.1 > 20.3 and checks.bucket_of(r, "a", port) in away else "a"

    r.traffic = [conn(i, port, where(i, port)) for i, port in enumerate(ports)]
    check = checks.check_placement(r, 0.0, 60.0)
    assert check.ok, check.detail
    assert "in flight" in check.detail
    moved = next(i for i, port in enumerate(ports) if where(i, port) == "b" and i > 120)
    r.traffic[moved] = conn(moved, ports[moved], "a")  # processed at home: the table said b
    check = checks.check_placement(r, 0.0, 60.0)
    assert not check.ok
    assert "a: b->a" in check.detail


def test_long_connections_check_counts_every_failure_and_server_change() -> None:
    r = base()
    r.traffic = [long("a", 0, 70, "a"), long("a", 30, 66, "b", tag="late")]
    assert checks.check_long_connections(r).ok
    r.traffic.append(long("b", 0, 40, "b", ok=False))
    assert not checks.check_long_connections(r).ok


def test_one_hop_check_uses_policies_and_counters() -> None:
    """Sent to another PoP: the edges' FWD_INTER and the servers' SECOND_CHANCE_INTER (not the
    intra-PoP SECOND_CHANCE); received once, by the server that processes it."""
    r = base()
    r.policies = [policy(20.0, "a", {"b": 0.3}), policy(21.0, "b", {"c": 0.2})]
    r.traffic = [short("a", 30, "b"), short("b", 30, "c"), short("c", 30, "c")]
    zero = {"fwd_inter": 0, "second_chance": 0, "second_chance_inter": 0, "received_peer": 0}
    r.counters = {
        "load_on": counters(**{"a-edge": zero, "a-s1": zero, "b-s1": zero}),
        "end": counters(
            **{
                "a-edge": zero | {"fwd_inter": 90},
                "a-s1": zero | {"second_chance_inter": 10, "second_chance": 7},
                "b-s1": zero | {"received_peer": 100},
            }
        ),
    }
    assert checks.check_one_hop(r).ok
    r.traffic.append(short("a", 31, "c"))  # region a answered by c: two hops
    assert not checks.check_one_hop(r).ok
    r.traffic.pop()
    r.counters["end"]["b-s1"]["received_peer"] = 107  # intra-PoP second chances are not sent
    assert not checks.check_one_hop(r).ok


def test_dsr_check_fails_when_an_edge_sees_answers() -> None:
    r = base()
    r.traffic = [short("a", 30, "a")]
    r.counters = {
        "load_on": {"a-edge": {"fwd_intra": 0, "pass_not_ours": 0}},
        "end": {"a-edge": {"fwd_intra": 10_000, "pass_not_ours": 5}},
    }
    assert checks.check_dsr(r).ok
    r.counters["end"]["a-edge"]["pass_not_ours"] = 4000
    assert not checks.check_dsr(r).ok


def test_after_cancel_checks() -> None:
    r = base()
    r.traffic = [short("a", 62 + i * 0.1, "a") for i in range(50)]
    r.traffic += [long("a", 30, 66, "b", tag="late"), long("a", 30, 66, "a", tag="late")]
    assert all(c.ok for c in checks.check_after_cancel(r, 62.0, 68.0))
    r.traffic.append(short("a", 63, "b"))
    assert not checks.check_after_cancel(r, 62.0, 68.0)[0].ok


def test_first_times_for_the_benchmark() -> None:
    r = base()
    r.statuses = [
        record.StatusRecord(12.5, "a", "shed", 0.99),
        record.StatusRecord(5, "a", "shed", 1),
    ]
    r.statuses.sort(key=lambda s: s.t)
    r.policies = [policy(13.0, "a", {"b": 0.2})]
    r.samples = [sample(12.0), sample(13.5, away=51)]
    r.traffic = [short("a", 13.6, "b"), short("a", 13.2, "a")]
    times = record.first_time(r, since=10.0)
    assert times == pytest.approx(
        {"flagged": 2.5, "policy": 3.0, "applied": 3.5, "first_in_b": 3.61}
    )


def test_timeline_rows_and_text_and_json_round_trip(tmp_path: Path) -> None:
    r = base()
    r.samples = [sample(0.0), sample(2.0, away=64, shares={"a": {"b": 0.25}})]
    r.traffic = [short("a", 1.0, "a"), short("a", 3.0, "b"), short("b", 3.5, "b", Outcome.RESET)]
    r.traffic.append(long("a", 0.0, 4.0, "a"))
    rows = report.timeline(r, step_s=2.0)
    assert [row.t for row in rows] == [2.0]
    assert rows[0].new_a == {"a": 1} and rows[0].shares == "a->b 25%"
    assert rows[0].long_live == {"a": 1}
    text = report.format_timeline(r)
    assert "a->b 25%" in text and "load a" in text
    path = tmp_path / "r.json"
    r.save(path)
    again = record.Result.from_json(path.read_text())
    assert again == r
    assert report.totals(r)["short"]["by_outcome"] == {"ok": 2, "reset": 1}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    r = base()
    r.samples = [sample(float(t), shares={"a": {"b": 0.2}}) for t in range(10)]
    r.traffic = [short("a", t * 0.1, "b" if t % 5 == 0 else "a") for t in range(100)]
    path = tmp_path / "timeline.png"
    report.plot(r, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("rate", "cost", "duty"), [(0.0, 1.0, 0.0), (100.0, 1.0, 0.1), (5000.0, 1.0, 1.0)]
)
def test_burner_duty_follows_the_packet_rate(rate: float, cost: float, duty: float) -> None:
    assert work.duty_for(rate, cost) == pytest.approx(duty)


def util_samples(
    loads: list[tuple[float, float, float]], start: float = 10.0
) -> list[record.Sample]:
    """One sample per 0.5 s from `start`: the (a, b, c) utilisations given, in turn."""
    out = []
    for i, (a, b, c) in enumerate(loads):
        s = sample(start + 0.5 * i)
        s.util = {"a": a, "b": b, "c": c}
        out.append(s)
    return out


def test_relief_is_when_every_pop_stays_below_the_shed_threshold() -> None:
    """Gone = the start of the first stretch of CALM_HOLD_S in which no PoP is over its
    combined_over enter threshold (0.85), after the overload was seen; a dip is not relief."""
    r = base()
    over, calm, dip = (1.0, 0.7, 0.3), (0.8, 0.8, 0.5), (0.6, 0.9, 0.3)  # dip: b over
    r.samples = util_samples([(0.3, 0.2, 0.1)] * 4 + [over] * 10 + [calm] * 4 + [dip] * 2
                             + [calm] * 30)  # fmt: skip
    gone = checks.overload_gone(r, 10.0, 50.0)
    assert gone == pytest.approx(10.0 + 0.5 * 20)  # after the dip, not at the first calm
    check = checks.check_relief(r)
    assert check.ok, check.detail
    assert not checks.check_relief(r, max_s=5.0).ok
    r.samples = util_samples([(0.3, 0.2, 0.1)] * 4 + [over] * 76)
    assert checks.overload_gone(r, 10.0, 50.0) is None
    assert not checks.check_relief(r).ok
    r.samples = util_samples([(0.3, 0.2, 0.1)] * 80)  # never overloaded: nothing relieved
    assert checks.overload_gone(r, 10.0, 50.0) is None


def test_infeasible_is_reported_only_by_an_infeasible_partial_policy_in_its_phase() -> None:
    r = base()
    r.marks |= {"infeasible_on": 100.0, "infeasible_off": 140.0}
    r.policies = [policy(110.0, "a", {"b": 0.4})]
    assert not checks.check_infeasible_reported(r).ok  # a policy, but not said infeasible
    rule = "partial: receivers full, a at 0.99 > target 0.75"
    said = record.PolicyRecord(120.0, "a", "update", {"b": 0.44}, 2, rule, infeasible=True)
    r.policies.append(said)
    assert checks.check_infeasible_reported(r).ok
    r.marks["infeasible_on"] = 125.0  # before the phase: not its answer
    assert not checks.check_infeasible_reported(r).ok
