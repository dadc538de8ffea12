"""Connections as fluid cohorts with exponential lifetimes: why load follows policy with a lag.

A policy moves only *new* connections; the ones already living in a PoP stay until they end. With
lifetimes exponential (mean ``tau`` per tier) a cohort of ``n`` connections keeps ``n e^(-dt/tau)``
after ``dt``, so per (place, tier) one float is enough: no per-connection objects, and a tick is a
handful of numpy operations whatever the traffic volume.

Where a connection lives:
- ``anyc[r, t]``: region ``r``'s connections that arrived by anycast (at its catchment PoP); a
  catchment change breaks them (BGP) or loses them (the PoP went dark);
- ``local[l, t]``: processed at the PoP ``l`` they landed in;
- arcs ``(l, t, p)``: landed in ``l``, forwarded (encapsulated) to ``p``;
- ``direct[p, t]``: sent to ``p`` by a DNS answer (unicast), immune to catchment changes.

Removing a region's connections from ``l`` takes the same fraction from ``local[l]`` and every
arc out of ``l``: the forwarding hash does not look at the region, so every region landing in
``l`` has the same mix of processing PoPs (exact in the fluid limit).

The ledger counts every connection once on arrival (served where it landed, or forwarded) and
once on leaving (done, broken by a routing change, or lost with a failed PoP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.world import FloatArray, IntArray, weighted_count

SERVED, FORWARDED = 0, 1
PRUNE_BELOW = 1e-6


@dataclass
class Ledger:
    """Per outcome, indexed [SERVED] / [FORWARDED] (the category a connection arrived in)."""

    arrived: FloatArray = field(default_factory=lambda: np.zeros(2))
    done: FloatArray = field(default_factory=lambda: np.zeros(2))
    broken: FloatArray = field(default_factory=lambda: np.zeros(2))
    lost: FloatArray = field(default_factory=lambda: np.zeros(2))


def bincount2(index: IntArray, n_rows: int, n_cols: int, weights: FloatArray) -> FloatArray:
    """Sum ``weights`` (rows of ``n_cols``) into ``n_rows`` rows by ``index``."""
    flat = (index[:, None] * n_cols + np.arange(n_cols)).ravel()
    return weighted_count(flat, weights.ravel(), n_rows * n_cols).reshape(n_rows, n_cols)


class Cohorts:
    def __init__(
        self,
        n_regions: int,
        n_pops: int,
        lifetime_s: FloatArray,
        cost: FloatArray,
        steerable: FloatArray | None = None,
    ) -> None:
        self.n_regions, self.n_pops, self.n_tiers = n_regions, n_pops, lifetime_s.size
        self.lifetime_s = lifetime_s
        self.cost = cost  # cores per connection, per tier
        # Tiers a DNS answer may send elsewhere (1.0) or not (0.0): the forwardable ones.
        self.steerable = np.ones(lifetime_s.size) if steerable is None else steerable
        self.anyc = np.zeros((n_regions, self.n_tiers))
        self.local = np.zeros((n_pops, self.n_tiers))
        self.direct = np.zeros((n_pops, self.n_tiers))
        self.arc_l = np.zeros(0, np.int64)
        self.arc_t = np.zeros(0, np.int64)
        self.arc_p = np.zeros(0, np.int64)
        self.arc_share = np.zeros(0)
        self.arc_n = np.zeros(0)
        self.ledger = Ledger()
        self.alive = np.ones(n_pops, dtype=bool)
        # What the last tick did, for metrics and counters.
        self.landed_arrivals = np.zeros((n_pops, self.n_tiers))
        self.arc_arrivals = np.zeros(0)
        self._decay_dt = -1.0
        self._decay = np.ones(self.n_tiers)

    def warm_start(self, rates: FloatArray, catchment: IntArray, dt: float) -> None:
        """The steady state of ``rates``: a network already running when the clock starts.

        With ageing before adding, a tick's fixed point is n = r dt / (1 - e^(-dt/tau)), which is
        r tau within half a tick's arrivals.
        """
        self.anyc = rates * dt / (1.0 - np.exp(-dt / self.lifetime_s))
        self.local = bincount2(catchment, self.n_pops, self.n_tiers, self.anyc)
        self.ledger.arrived[SERVED] += float(self.anyc.sum())

    # --- the tick -----------------------------------------------------------------------------

    def step(
        self,
        dt: float,
        rates: FloatArray,
        catchment: IntArray,
        dns_target: IntArray | None = None,
        dns_frac: FloatArray | None = None,
    ) -> None:
        """Age every cohort by ``dt``, then add ``rates * dt`` new connections where they go."""
        if dt != self._decay_dt:
            self._decay_dt, self._decay = dt, np.exp(-dt / self.lifetime_s)
        keep = self._decay
        led = self.ledger
        led.done[SERVED] += float(np.sum(self.local * (1.0 - keep)))
        self.local *= keep
        self.anyc *= keep
        arc_keep = keep[self.arc_t]
        led.done[FORWARDED] += float(
            np.sum(self.direct * (1.0 - keep)) + self.arc_n @ (1.0 - arc_keep)
        )
        self.direct *= keep
        self.arc_n *= arc_keep

        new = rates * dt
        if dns_frac is not None and dns_target is not None:
            steered = new * dns_frac[:, None] * self.steerable
            self.direct += bincount2(dns_target, self.n_pops, self.n_tiers, steered)
            led.arrived[FORWARDED] += float(steered.sum())
            new = new - steered
        self.anyc += new
        landed = bincount2(catchment, self.n_pops, self.n_tiers, new)
        self.landed_arrivals = landed
        if self.arc_n.size:
            fwd = landed[self.arc_l, self.arc_t] * self.arc_share
            self.arc_arrivals = fwd
            out = self._by_pop_tier(self.arc_l, self.arc_t, fwd)
            dead = ~self.alive[self.arc_p]
            if dead.any():  # forwarded to a PoP that is gone: those connections fail
                led.lost[FORWARDED] += float(fwd[dead].sum())
                lost_out = self._by_pop_tier(self.arc_l[dead], self.arc_t[dead], fwd[dead])
                self.anyc -= new * _ratio(lost_out, landed)[catchment]
                fwd = np.where(dead, 0.0, fwd)
            self.arc_n += fwd
            self.local += landed - out
            led.arrived[FORWARDED] += float(out.sum())
            led.arrived[SERVED] += float((landed - out).sum())
        else:
            self.local += landed
            led.arrived[SERVED] += float(landed.sum())

    def _by_pop_tier(self, pop: IntArray, tier: IntArray, weights: FloatArray) -> FloatArray:
        """(pops, tiers) sums of per-arc ``weights``."""
        flat = pop * self.n_tiers + tier
        return weighted_count(flat, weights, self.n_pops * self.n_tiers).reshape(
            self.n_pops, self.n_tiers
        )

    # --- views --------------------------------------------------------------------------------

    def load(self) -> FloatArray:
        """Cores busy per PoP."""
        own = (self.local + self.direct) @ self.cost
        if not self.arc_n.size:
            return np.asarray(own)
        received = weighted_count(self.arc_p, self.arc_n * self.cost[self.arc_t], self.n_pops)
        return np.asarray(own + received)

    def forwarded_out(self) -> FloatArray:
        """(pops, tiers) connections that landed in a PoP and live elsewhere."""
        return self._by_pop_tier(self.arc_l, self.arc_t, self.arc_n)

    def received(self) -> FloatArray:
        """(pops, tiers) connections processed here that landed in another PoP."""
        return self._by_pop_tier(self.arc_p, self.arc_t, self.arc_n)

    def landed(self) -> FloatArray:
        """(pops, tiers) anycast connections per landing PoP, wherever processed."""
        return self.local + self.forwarded_out()

    def active(self) -> FloatArray:
        """[served, forwarded] connections alive now."""
        return np.array([float(self.local.sum()), float(self.direct.sum() + self.arc_n.sum())])

    def shares(self) -> dict[tuple[int, int, int], float]:
        return {
            (int(a), int(b), int(c)): float(s)
            for a, b, c, s in zip(self.arc_l, self.arc_t, self.arc_p, self.arc_share, strict=True)
            if s > 0.0
        }

    # --- changes ------------------------------------------------------------------------------

    def set_shares(self, shares: dict[tuple[int, int, int], float]) -> None:
        """Replace every forwarding share (landing, tier, dest) -> fraction of new connections.

        Arcs whose share drops to zero keep their connections until those end (draining).
        """
        t_n = self.n_tiers
        key = (self.arc_l * t_n + self.arc_t) * self.n_pops + self.arc_p
        index = {int(k): i for i, k in enumerate(key)}
        share = np.zeros(key.size)
        extra: list[tuple[int, int, int, float]] = []
        for (l_, t_, p_), s in shares.items():
            if s <= 0.0:
                continue
            i = index.get((l_ * t_n + t_) * self.n_pops + p_)
            if i is None:
                extra.append((l_, t_, p_, s))
            else:
                share[i] = s
        self.arc_share = share
        if extra:
            self.arc_l = np.concatenate([self.arc_l, np.array([e[0] for e in extra], np.int64)])
            self.arc_t = np.concatenate([self.arc_t, np.array([e[1] for e in extra], np.int64)])
            self.arc_p = np.concatenate([self.arc_p, np.array([e[2] for e in extra], np.int64)])
            self.arc_share = np.concatenate([self.arc_share, np.array([e[3] for e in extra])])
            self.arc_n = np.concatenate([self.arc_n, np.zeros(len(extra))])
        self.prune()

    def prune(self) -> None:
        """Drop drained arcs whose last connections have (nearly) all ended."""
        gone = (self.arc_share <= 0.0) & (self.arc_n < PRUNE_BELOW)
        if gone.any():
            self.ledger.done[FORWARDED] += float(self.arc_n[gone].sum())
            keep = ~gone
            self.arc_l, self.arc_t = self.arc_l[keep], self.arc_t[keep]
            self.arc_p = self.arc_p[keep]
            self.arc_share, self.arc_n = self.arc_share[keep], self.arc_n[keep]

    def drop_regions(self, regions: IntArray, catchment: IntArray, broken: bool) -> float:
        """Remove every anycast connection of ``regions`` (their catchment moved or died).

        ``broken``: a routing change did it (counted as broken); otherwise a failure (lost).
        Returns the number of connections removed.
        """
        if regions.size == 0:
            return 0.0
        removed = bincount2(catchment[regions], self.n_pops, self.n_tiers, self.anyc[regions])
        frac = _ratio(removed, self.landed())
        served = float(np.sum(self.local * frac))
        arc_frac = frac[self.arc_l, self.arc_t]
        forwarded = float(self.arc_n @ arc_frac)
        self.local *= 1.0 - frac
        self.arc_n *= 1.0 - arc_frac
        self.anyc[regions] = 0.0
        outcome = self.ledger.broken if broken else self.ledger.lost
        outcome[SERVED] += served
        outcome[FORWARDED] += forwarded
        return served + forwarded

    def fail_pop(self, pop: int, catchment: IntArray) -> None:
        """``pop`` went dark: what landed there and what was processed there is lost."""
        self.drop_regions(np.flatnonzero(catchment == pop), catchment, broken=False)
        inbound = self.arc_p == pop
        if inbound.any():
            removed = self._by_pop_tier(
                self.arc_l[inbound], self.arc_t[inbound], self.arc_n[inbound]
            )
            self.anyc *= 1.0 - _ratio(removed, self.landed())[catchment]
            self.ledger.lost[FORWARDED] += float(self.arc_n[inbound].sum())
            self.arc_n[inbound] = 0.0
        self.ledger.lost[FORWARDED] += float(self.direct[pop].sum())
        self.ledger.lost[SERVED] += float(self.local[pop].sum())
        self.local[pop] = 0.0
        self.direct[pop] = 0.0
        self.alive[pop] = False

    def revive(self, pop: int) -> None:
        self.alive[pop] = True


def _ratio(part: FloatArray, whole: FloatArray) -> FloatArray:
    """part / whole in [0, 1], 0 where whole is 0."""
    out = np.divide(part, whole, out=np.zeros_like(part), where=whole > 0.0)
    return np.clip(out, 0.0, 1.0)
