"""Native demand from what the data plane really counts: packets through the forwarder model
(edge, then server, as in a PoP), counters mapped by the sync, summed by the engine.

A packet received from a peer PoP used to be counted twice at the receiving PoP: `received_peer`
by its edge and `local` by the server behind it. The engine took the second for the PoP's own
demand, so a PoP that started receiving looked as if it had to shed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from schemas.bucket import Bucket
from schemas.messages import DataplaneStats, PolicyEvent
from services.forwarder import packets as P
from services.forwarder.layout import Verdict
from services.forwarder.loader import Count
from services.forwarder.model import edge, server
from services.forwarder.sync import dataplane_stats
from services.policy_engine.engine import EngineState, Tick, decide
from services.policy_engine.model import PopModel, estimate_native
from tests.policy.test_engine import engine, status

ST = P.state(Bucket(primary=P.SERVER4))


class Pop:
    """One PoP's edge and server (the forwarder model), with their verdicts so far."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, Counter[Verdict]] = {"edge1": Counter(), "s1": Counter()}
        self.sport = 1024

    def _through(self, frame: bytes) -> None:
        at_edge = edge(frame, P.EDGE_CFG, ST)
        self.counts["edge1"][at_edge.verdict] += 1
        at_server = server(at_edge.packet, P.SERVER_CFG, ST)
        self.counts["s1"][at_server.verdict] += 1

    def clients(self, n: int) -> None:
        for _ in range(n):
            self.sport += 1
            self._through(bytes(P.client(flags="A", sport=self.sport)))

    def from_peer(self, n: int) -> None:
        for _ in range(n):
            self.sport += 1
            inner = P.client(flags="A", sport=self.sport)
            self._through(bytes(P.gue(inner, outer_src=P.PEER_POP_EDGE4, outer_dst=P.EDGE4)))

    def stats(self, at: float) -> list[DataplaneStats]:
        return [
            dataplane_stats(
                self.name,
                f"{self.name}-{node}",
                at,
                {0: {v: Count(c[v], 0) for v in Verdict}},
            )
            for node, c in self.counts.items()
        ]


def _native(pop: Pop, load: float, own: int, received: int) -> float:
    model = PopModel(pop.name)
    for s in pop.stats(0.0):
        model.observe_stats(s)
    pop.clients(own)
    pop.from_peer(received)
    for s in pop.stats(10.0):
        model.observe_stats(s)
    rates = model.tier_rates(10.0, 30.0)
    return estimate_native(load, rates, [0], {})[0]


@pytest.mark.parametrize("received", [0, 50, 150])
def test_receiving_does_not_grow_native_demand(received: int) -> None:
    # b processes 100 packets of its own and `received` of a's; a packet costs 0.03 cores.
    b = Pop("b")
    native = _native(b, 0.03 * (100 + received), own=100, received=received)
    assert native == pytest.approx(3.0)


def test_every_packet_is_counted_once_across_edge_and_server() -> None:
    b = Pop("b")
    b.clients(10)
    b.from_peer(7)
    totals = {"local": 0, "received_from_peer": 0, "intra_pop_forward": 0}
    for s in b.stats(1.0):
        for row in s.tiers:
            for field in totals:
                totals[field] += getattr(row, field)
    assert totals == {"local": 10, "received_from_peer": 7, "intra_pop_forward": 17}


def test_the_engine_keeps_a_policy_while_its_receiver_takes_the_traffic() -> None:
    # a at 9 cores sheds 1.5 to b (10 ms). b then receives that traffic: its counters must not
    # turn it into b's own demand, or b looks full and a's policy is cancelled ("recovered").
    state = engine()
    b = Pop("b")
    for s in b.stats(0.0):
        decide(state, s, 0.0)
    events = {e.source: e for e in _feed(state, 1.0, {"a": 9.0, "b": 6.0, "c": 7.0})}
    assert events["a"].shares[0].share == pytest.approx(1.5 / 9.0)
    b.clients(400)  # 6 cores of b's own at 0.015 cores a packet
    b.from_peer(100)  # a's 1.5 cores
    for s in b.stats(10.0):
        decide(state, s, 10.0)
    again = _feed(state, 10.0, {"a": 7.5, "b": 7.5, "c": 7.0})
    assert state.native["b"][0] == pytest.approx(6.0)
    assert again == []  # a's policy stands


def _feed(state: EngineState, now: float, loads: dict[str, float]) -> list[PolicyEvent]:
    for pop, load in loads.items():
        decide(state, status(pop, now, load), now)
    return decide(state, Tick(), now)[1]
