"""What the policy engine knows about each PoP, and the native-demand estimate the solver needs.

The analytics verdict (pop-status.v1) gives a PoP's capacity and *measured* load. Measured load
already includes what peers forward in and excludes what the PoP forwards out, so solving on it
would chase our own policies. The forwarders' per-tier counters (dataplane-stats.v1) say how
much of each tier is processed locally, forwarded out and received; from their rates we split
the measured load into native demand per tier:

    cores per packet  k = load / (local + received)          (summed over tiers)
    native[t]           = k * (local[t] + forwarded_out[t])  forwarded_out = inter-PoP + second
                                                              chance (established flows kept on
                                                              their remote secondary)

Packet rates are a proxy for CPU cost. The rates are summed over every node of the PoP (edges
and servers), which is right because the data plane counts each packet once per PoP, at the
node that processes it or sends it out (services/forwarder/README.md, "Counted once per PoP"):
``local`` is our own traffic processed here, ``inter_pop_forward`` + ``second_chance_forward``
our own traffic sent to another PoP, ``received_from_peer`` another PoP's traffic processed
here (a server counts it so even when it came through our edge: GUE flag FROM_PEER), and hand-
offs inside the PoP (``intra_pop_forward``: every packet an edge passes on, second chances to
an intra-PoP secondary) are not used. Received traffic thus weighs in ``k`` but never in native
demand: a PoP does not look like a shedder because it takes a neighbour's overflow.

A PoP past saturation measures 100 % of its cores however much more it is asked for, so ``k``
from that moment is too small and the demand would be underestimated exactly when it matters.
``k`` is therefore learned (an exponential average) only while the PoP is below
``calibrate_below`` utilisation, and a saturated PoP's demand is its counters times the ``k`` it
had before: packets keep being counted as they arrive, whether or not the servers keep up. If
the traffic got dearer per packet (a flood of handshakes), the ``k`` measured now, a floor while
saturated, is higher than the learned one and is used instead; the engine's integral action
(engine.py) closes what is left.

A share moves new connections only: connections established before it stay where they are
(that is the promise), so while long-lived ones last a share of ``x`` moves less than ``x`` of
the tier's demand. The engine measures how much it does reach, per PoP and tier, once a share
has held still long enough for short connections to have turned over (``reach_after_s``) and
while the PoP is not saturated (a saturated PoP's clients retry and its connections queue, so
its own packets count more than its new connections would and the reach would look too small):

    reach[t] = forwarded[t] / (local[t] + forwarded[t]) / share[t]

and gives the solver only ``reach x native`` as movable, the rest as load that stays. Without it
a PoP with long-lived connections stops short of its target whatever the solver says (the lab:
a third of a's packets are long echo connections), and only the integral action, capped and
slow, would close the gap.

Without fresh counters the load is split by a configured tier mix, corrected by the traffic our
current policies move in and out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from popshift.network import NetworkConfig
from schemas.messages import DataplaneStats, PopStatus, PopStatusRow, TierCounters

MIN_REACH_SHARE = 0.2
"""Smaller shares move too few packets to measure their reach (a tenth of 170 packets a second
is noise)."""
MIN_REACH = 0.2
"""A reach below this is taken as this: the solver must not count on moving nothing."""


class TierRates(NamedTuple):
    """Packets per second of one tier at one PoP (or node) by what happened to them (a tuple:
    the engine makes one per tier, PoP and counter report)."""

    local: float = 0.0
    forwarded: float = 0.0
    received: float = 0.0

    def plus(self, other: TierRates) -> TierRates:
        return TierRates(
            self.local + other.local,
            self.forwarded + other.forwarded,
            self.received + other.received,
        )


def _counts(c: TierCounters) -> tuple[int, int, int]:
    """(our own processed here, our own sent to another PoP, received from other PoPs)."""
    return c.local, c.inter_pop_forward + c.second_chance_forward, c.received_from_peer


def counter_rates(previous: DataplaneStats, current: DataplaneStats) -> dict[int, TierRates]:
    """Per-tier rates between two snapshots of one node; a counter that went down is a restart."""
    dt = current.at - previous.at
    if dt <= 0.0:
        return {}
    before = {c.tier: _counts(c) for c in previous.tiers}
    rates: dict[int, TierRates] = {}
    for c in current.tiers:
        local, out, received = _counts(c)
        then = before.get(c.tier, (0, 0, 0))
        if local < then[0] or out < then[1] or received < then[2]:
            then = (0, 0, 0)  # the node restarted; its counters began again at zero
        rates[c.tier] = TierRates(
            (local - then[0]) / dt, (out - then[1]) / dt, (received - then[2]) / dt
        )
    return rates


def counter_rates_many(
    previous_at: np.ndarray, previous: np.ndarray, at: float, current: np.ndarray
) -> np.ndarray:
    """:func:`counter_rates` of one node at many PoPs at once (the simulator's forwarders):
    counts are int64 arrays (PoPs, tiers, 3) of (local, out, received) as :func:`_counts` says;
    rows whose ``previous_at`` is not before ``at`` are left to the caller (NaN there)."""
    dt = at - previous_at
    restarted = (current < previous).any(axis=2, keepdims=True)
    then = np.where(restarted, 0, previous)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray((current - then) / dt[:, None, None])


@dataclass
class PopModel:
    """One PoP: the latest analytics verdict and the latest counter rates of each node."""

    name: str
    status: PopStatus | PopStatusRow | None = None
    last_stats: dict[str, DataplaneStats] = field(default_factory=dict)
    node_rates: dict[str, tuple[float, dict[int, TierRates]]] = field(default_factory=dict)
    cores_per_packet: float | None = None
    """``k`` learned while the PoP was not saturated (see the module docstring; the engine
    learns it for every PoP at once: :func:`packet_costs`)."""
    boost: float = 0.0
    """Cores the engine's integral action takes off the PoP's target load (engine.py)."""
    integrated_at: float | None = None
    """``at`` of the last pop-status the integral action has used."""
    previous_load: float | None = None
    reach: dict[int, float] = field(default_factory=dict)
    """Per tier, the part of native demand the shares in force reach (1 when not measured)."""

    def update_reach(
        self, rates: Mapping[int, TierRates], shares: Mapping[int, float], weight: float
    ) -> None:
        """Learn each tier's reach from the counters, under ``shares`` (tier -> total share)
        that have held still long enough; a tier no longer forwarded forgets it."""
        for tier in [t for t in self.reach if shares.get(t, 0.0) <= 0.0]:
            del self.reach[tier]
        for tier, share in shares.items():
            r = rates.get(tier, TierRates())
            native = r.local + r.forwarded
            if share < MIN_REACH_SHARE or native <= 0.0:
                continue
            measured = min(1.0, max(MIN_REACH, r.forwarded / native / share))
            old = self.reach.get(tier)
            self.reach[tier] = measured if old is None else old + weight * (measured - old)

    def observe_status(self, status: PopStatus | PopStatusRow) -> None:
        if self.status is None or status.at >= self.status.at:
            self.status = status

    def observe_stats(self, stats: DataplaneStats) -> None:
        previous = self.last_stats.get(stats.node)
        if previous is not None and stats.at <= previous.at:
            return  # late or duplicate delivery
        self.last_stats[stats.node] = stats
        if previous is not None:
            self.observe_rates(stats.node, stats.at, counter_rates(previous, stats))

    def observe_rates(self, node: str, at: float, rates: dict[int, TierRates]) -> None:
        """A node's rates between its last two counter reports, reported at ``at``."""
        if rates:
            self.node_rates[node] = (at, rates)

    def fresh(self, now: float, max_age_s: float) -> bool:
        return self.status is not None and now - self.status.at <= max_age_s

    def tier_rates(self, now: float, max_age_s: float) -> dict[int, TierRates]:
        """Rates summed over the nodes that reported recently."""
        if len(self.node_rates) == 1:  # one node (an edge-only PoP, the simulator): no sum
            ((at, rates),) = self.node_rates.values()
            return rates if now - at <= max_age_s else {}
        total: dict[int, TierRates] = {}
        for at, rates in self.node_rates.values():
            if now - at > max_age_s:
                continue
            for tier, r in rates.items():
                total[tier] = total.get(tier, TierRates()).plus(r)
        return total


def packet_costs(
    load: np.ndarray,
    processed: np.ndarray,
    utilisation: np.ndarray,
    learned: np.ndarray,
    calibrate_below: float,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cores per packet now of many PoPs (``processed``: packets a second processed there, local
    and received; NaN where none), and the ratio each has learned after this (NaN: none yet).

    Measured while unsaturated (and learned); saturated, the measured ratio is a floor (the load
    is capped, the packets are not), so the one learned before is the better figure unless the
    traffic got dearer per packet since."""
    counted = processed > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        measured = load / processed
    calibrating = counted & (utilisation < calibrate_below)
    never = np.isnan(learned)
    learned_after = np.where(
        calibrating, np.where(never, measured, learned + weight * (measured - learned)), learned
    )
    saturated = np.maximum(measured, np.where(never, 0.0, learned))
    cost = np.where(counted, np.where(calibrating, measured, saturated), np.nan)
    return cost, learned_after


def native_from_counters(cost: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Native demand in cores per PoP and tier: ``cost`` (cores per packet, per PoP) times each
    tier's own packets, processed here or forwarded out; ``rates`` as :func:`counter_rates_many`
    gives them (PoPs, tiers, local / forwarded / received)."""
    return np.asarray(cost[:, None] * (rates[:, :, 0] + rates[:, :, 1]))


def estimate_native(
    load: float,
    rates: Mapping[int, TierRates],
    tier_ids: list[int],
    mix: Mapping[int, float],
    moved_out: float = 0.0,
    moved_in: float = 0.0,
) -> dict[int, float]:
    """Native demand per tier in cores of one PoP (see the module docstring for the formula;
    the engine estimates every PoP with counters at once, with :func:`native_from_counters`)."""
    processed = 0.0
    for r in rates.values():
        processed += r.local + r.received
    if processed > 0.0:
        row = np.array([[rates.get(t, TierRates()) for t in tier_ids]])
        native = native_from_counters(np.array([load / processed]), row)[0]
        return dict(zip(tier_ids, native.tolist(), strict=True))
    native_total = max(0.0, load + moved_out - moved_in)
    weights = {t: max(0.0, mix.get(t, 0.0)) for t in tier_ids}
    total_w = sum(weights.values())
    if total_w <= 0.0:
        weights = dict.fromkeys(tier_ids, 1.0)
        total_w = float(len(tier_ids))
    return {t: native_total * w / total_w for t, w in weights.items()}


def latency_matrix(network: NetworkConfig, names: list[str]) -> np.ndarray:
    """PoP-to-PoP added latency in ms for ``names`` (``inf`` where the config gives none)."""
    n = len(names)
    lat = np.full((n, n), np.inf)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ms = network.latency(a, b)
            if ms is not None:
                lat[i, j] = ms
    return lat
