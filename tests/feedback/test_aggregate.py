"""The ingest's pure core: normalisation, order, liveness and PoP aggregation, clock by hand."""

from __future__ import annotations

import pytest

from schemas.messages import PopFeedback, ServerHeartbeat, ServerLoad, ServiceQos
from services.feedback_ingest.aggregate import Outcome, PopAggregator, UnknownPop
from tests.conftest import NETWORK, server_address


def hb(
    server: str = "a1", seq: int = 1, busy: float = 2.0, pop: str = "a", **kw
) -> ServerHeartbeat:
    return ServerHeartbeat(
        pop=pop,
        server=server,
        address=kw.pop("address", None) or _default_address(pop),
        seq=seq,
        sent_at=kw.pop("sent_at", 100.0 + seq),
        capacity_cores=kw.pop("capacity", 4.0),
        cpu_busy_cores=busy,
        **kw,
    )


def _default_address(pop: str) -> str:
    return server_address(pop) if pop in NETWORK.by_name else "192.0.2.1"


def agg() -> PopAggregator:
    return PopAggregator(NETWORK, interval_s=1.0, missed_heartbeats=3, forget_after_s=60.0)


def test_heartbeats_are_normalised_and_combined_per_pop() -> None:
    a = agg()
    a.observe(hb("a1", busy=2.0), now=10.0)
    a.observe(
        hb("a2", busy=4.1, capacity=4.0, address=server_address("a", 2)), now=10.0
    )  # 5 % slack
    a.observe(hb("b1", busy=1.0, pop="b", capacity=8.0), now=10.0)
    loads = {p.pop: p for p in a.tick(10.5)}
    assert set(loads) == {"a", "b"}
    la = loads["a"]
    assert [(s.server, s.utilisation) for s in la.servers] == [("a1", 0.5), ("a2", 1.0)]
    assert la.healthy_capacity_cores == 8.0
    assert la.combined_load_cores == pytest.approx(6.0)
    assert la.at == 10.5
    assert la.servers[0].last_seen == 101.0  # the agent's sent_at: freshness downstream
    assert loads["b"].utilisation == pytest.approx(0.125)
    # what the core builds without re-validation must still be a valid message
    assert type(la).model_validate_json(la.model_dump_json()) == la


def test_duplicates_and_out_of_order_heartbeats_are_dropped_and_counted() -> None:
    a = agg()
    assert a.observe(hb(seq=5, busy=1.0), 1.0) is Outcome.ACCEPTED
    assert a.observe(hb(seq=5, busy=3.0), 1.1) is Outcome.DUPLICATE
    assert a.observe(hb(seq=4, busy=3.0), 1.2) is Outcome.OUT_OF_ORDER
    assert a.observe(hb(seq=6, busy=2.0), 1.3) is Outcome.ACCEPTED
    (load,) = a.tick(1.5)
    assert load.servers[0].utilisation == 0.5
    assert (a.stats.accepted, a.stats.duplicates, a.stats.out_of_order) == (2, 1, 1)


def test_a_silent_server_is_marked_down_after_k_intervals_and_comes_back() -> None:
    a = agg()
    a.observe(hb("a1", seq=1), 0.0)
    a.observe(hb("a2", seq=1, address=server_address("a", 2)), 0.0)
    for t in (1.0, 2.0, 3.0):
        a.observe(hb("a1", seq=int(t) + 1), t)
    (load,) = a.tick(3.0)  # a2 silent for exactly K=3 intervals: not yet down
    assert load.healthy_capacity_cores == 8.0
    (load,) = a.tick(3.01)
    assert [s.healthy for s in load.servers] == [True, False]
    assert load.healthy_capacity_cores == 4.0
    assert load.combined_load_cores == pytest.approx(2.0)
    assert a.stats.marked_down == 1
    # the next heartbeat brings it back, even if the agent restarted with a lower sequence
    assert a.observe(hb("a2", seq=0, address=server_address("a", 2)), 4.0) is Outcome.REVIVED
    (load,) = a.tick(4.0)
    assert load.healthy_capacity_cores == 8.0
    assert a.stats.revived == 1


def test_a_long_silent_server_is_forgotten() -> None:
    a = agg()
    a.observe(hb("a1"), 0.0)
    a.observe(hb("a2", address=server_address("a", 2)), 50.0)
    (load,) = a.tick(61.0)
    assert [s.server for s in load.servers] == ["a2"]
    assert a.stats.forgotten == 1
    assert a.tick(200.0) == []


def test_unknown_pop_is_refused() -> None:
    with pytest.raises(UnknownPop, match="unknown pop: zzz"):
        agg().observe(hb(pop="zzz"), 0.0)


def qos(p95: float, probes: int = 10, ok: float = 1.0) -> ServiceQos:
    return ServiceQos(probes=probes, success_rate=ok, latency_p50_ms=p95 / 2, latency_p95_ms=p95)


def test_qos_is_capacity_weighted_and_down_servers_do_not_count() -> None:
    a = agg()
    a.observe(hb("a1", capacity=4.0, qos=qos(10.0, ok=1.0)), 0.0)
    a.observe(hb("a2", capacity=12.0, address=server_address("a", 2), qos=qos(30.0, ok=0.5)), 0.0)
    a.observe(hb("a3", capacity=4.0, address=server_address("a", 3), qos=qos(900.0, ok=0.0)), -10.0)
    (load,) = a.tick(0.0)
    assert load.qos_p95_ms == pytest.approx((10 * 4 + 30 * 12) / 16)
    assert load.qos_success_rate == pytest.approx(0.75)


def server_load(name: str, util: float, healthy: bool = True) -> ServerLoad:
    return ServerLoad(
        server=name,
        address=server_address("b"),
        capacity_cores=8.0,
        utilisation=util,
        healthy=healthy,
    )


def test_pop_aggregated_feedback_lands_in_the_same_shape() -> None:
    a = agg()
    fb = PopFeedback(
        pop="b",
        seq=1,
        sent_at=50.0,
        servers=[server_load("b1", 0.5), server_load("b2", 0.9, healthy=False)],
    )
    assert a.observe(fb, 1.0) is Outcome.ACCEPTED
    assert a.observe(fb, 1.1) is Outcome.DUPLICATE
    (load,) = a.tick(1.5)
    assert [(s.server, s.healthy) for s in load.servers] == [("b1", True), ("b2", False)]
    assert load.healthy_capacity_cores == 8.0
    assert load.combined_load_cores == pytest.approx(4.0)
    assert load.servers[0].last_seen == 50.0
    # the management server goes silent: its servers go down like silent agents
    (load,) = a.tick(5.0)
    assert load.healthy_capacity_cores == 0.0
    # it restarts with a lower sequence: accepted
    restarted = fb.model_copy(update={"seq": 0, "sent_at": 60.0})
    assert a.observe(restarted, 6.0) is Outcome.ACCEPTED
    (load,) = a.tick(6.0)
    assert load.healthy_capacity_cores == 8.0
