"""The clock loop: demand -> routing -> cohorts -> metrics, with events and a strategy in it.

One tick of ``tick_s``: scheduled events fire, pending BGP changes whose propagation delay is over
take effect, the strategy runs if its round is due, then the cohorts age and take the tick's new
connections, and the metrics look at the loads. Everything random is seeded from the scenario, so
one seed gives one run, whichever strategy is in it.
"""

from __future__ import annotations

import gc
import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from sim.connections import Cohorts
from sim.demand import Demand
from sim.measure import QueueModel, QueueParams, measured_busy
from sim.metrics import Metrics
from sim.scenario import Dark, HalfServers, Scenario
from sim.strategies.base import Action, Counters, Observation, Strategy
from sim.world import FloatArray, IntArray, World

GC_YOUNG = 50_000
"""Objects allocated (net) between two collections of the youngest generation during a run."""

Progress = Callable[[float], None]
"""Called with simulated seconds done since the last call."""


@dataclass
class RunResult:
    strategy: str
    summary: dict[str, float]
    sample_t: FloatArray
    utilisation: FloatArray  # (samples, pops)
    overload_per_pop: FloatArray
    lat_hist: FloatArray
    conservation_error: float
    extra: dict[str, float] = field(default_factory=dict)


class Engine:
    """One strategy through one scenario on a shared world."""

    def __init__(self, scenario: Scenario, world: World, strategy: Strategy) -> None:
        self.sc, self.world, self.strategy = scenario, world, strategy
        tiers = world.tiers
        self.cost = np.array([t.cores_per_connection for t in tiers])
        self.cohorts = Cohorts(
            world.n_regions,
            world.n_pops,
            np.array([t.mean_lifetime_s for t in tiers]),
            self.cost,
            steerable=np.array([float(t.forwardable) for t in tiers]),
        )
        self.demand = Demand(world, scenario)
        self.metrics = Metrics(
            world.n_pops,
            world.n_tiers,
            scenario.overload_utilisation,
            work_per_connection=np.array([t.mean_lifetime_s for t in tiers]) * self.cost,
        )
        self.rng = np.random.default_rng([scenario.seed, 0xB6F])
        self.alive = np.ones(world.n_pops, dtype=bool)
        self.cap_factor = np.ones(world.n_pops)
        self.withdrawn: set[tuple[int, int]] = set()  # in force or on its way
        self._withdrawn_by_region: dict[int, set[int]] = {}
        self.pending: list[tuple[float, int, int, int, bool]] = []  # (at, seq, region, pop, wd)
        self._seq = 0
        self.home = world.region_rank[:, 0].copy()
        self.catchment = self.home.copy()
        self.dns_target = np.full(world.n_regions, -1, np.int64)
        self.dns_from = np.zeros(world.n_regions)
        self.dns_t0 = np.zeros(world.n_regions)
        self.dns_dir = np.zeros(world.n_regions)
        self.dns_added_ms = np.zeros(world.n_regions)
        self._moved_regions = np.zeros(0, np.int64)
        self._moved_ms = np.zeros(0)
        n, t = world.n_pops, world.n_tiers
        self.c_load = np.zeros(n)
        self.c_local = np.zeros((n, t))
        self.c_out = np.zeros((n, t))
        self.c_in = np.zeros((n, t))
        self.c_landed = np.zeros((n, t))
        self.c_qos = np.zeros(n)
        self.queue = QueueModel(n, QueueParams(cores_per_server=scenario.world.cores_per_server))
        # What the controllers see is feedback_delay_s old: the counters of recent ticks.
        self._seen: deque[tuple[Counters, FloatArray]] = deque()
        self.events = sorted(self._event_timeline(), key=lambda e: e[0])
        self.rates = np.zeros((world.n_regions, t))

    # --- events ---------------------------------------------------------------------------------

    def _event_timeline(self) -> list[tuple[float, Callable[[], None]]]:
        out: list[tuple[float, Callable[[], None]]] = []
        for e in self.sc.events:
            if isinstance(e, HalfServers):
                p = self.world.pop_index(e.pop)
                out.append((e.at_s, partial(self._set_cap, p, 1.0 - e.fraction_lost)))
                if e.until_s is not None:
                    out.append((e.until_s, partial(self._set_cap, p, 1.0)))
            elif isinstance(e, Dark):
                p = self.world.pop_index(e.pop)
                out.append((e.at_s, partial(self._go_dark, p)))
                if e.until_s is not None:
                    out.append((e.until_s, partial(self._come_back, p)))
        return out

    def _set_cap(self, pop: int, factor: float) -> None:
        self.cap_factor[pop] = factor

    def _go_dark(self, pop: int) -> None:
        self.cohorts.fail_pop(pop, self.catchment)
        self.alive[pop] = False
        gone = self.dns_target == pop  # health-checked DNS stops answering with a dead PoP
        self.dns_target[gone], self.dns_from[gone], self.dns_dir[gone] = -1, 0.0, 0.0
        self._reroute(broken=False)

    def _come_back(self, pop: int) -> None:
        self.alive[pop] = True
        self.cohorts.revive(pop)
        self._reroute(broken=False)  # anycast pulls its catchment back: an event, not a strategy

    @property
    def capacity(self) -> FloatArray:
        return np.where(self.alive, self.world.capacity * self.cap_factor, 0.0)

    # --- routing --------------------------------------------------------------------------------

    def _first_announcing(self, regions: IntArray) -> IntArray:
        rank = self.world.region_rank[regions]
        ok = self.alive[rank]
        for i, r in enumerate(regions):
            for p in self._withdrawn_by_region.get(int(r), ()):
                ok[i, rank[i] == p] = False
        # A prefix withdrawn everywhere stays with its nearest live PoP: never black-holed.
        first = np.where(ok.any(axis=1), ok.argmax(axis=1), self.alive[rank].argmax(axis=1))
        return np.asarray(rank[np.arange(regions.size), first], dtype=np.int64)

    def _reroute(self, broken: bool, regions: IntArray | None = None) -> None:
        """Recompute catchments (all regions or some); connections of moved regions go."""
        w = self.world
        if regions is None:
            rank = w.region_rank
            self.home = rank[np.arange(w.n_regions), self.alive[rank].argmax(axis=1)]
            regions = np.arange(w.n_regions)
        new = self._first_announcing(regions)
        moved = regions[new != self.catchment[regions]]
        if moved.size:
            self.cohorts.drop_regions(moved, self.catchment, broken=broken)
            self.catchment[regions] = new
        away = np.flatnonzero(self.catchment != self.home)
        self._moved_regions = away
        self._moved_ms = w.client_latency_ms(away, self.catchment[away]) - w.client_latency_ms(
            away, self.home[away]
        )

    def _apply_pending(self, now: float) -> None:
        changed: list[int] = []
        while self.pending and self.pending[0][0] <= now:
            _, _, r, p, withdraw = heapq.heappop(self.pending)
            held = self._withdrawn_by_region.setdefault(r, set())
            if withdraw:
                held.add(p)
            else:
                held.discard(p)
            changed.append(r)
        if changed:
            self._reroute(broken=True, regions=np.array(sorted(set(changed)), np.int64))

    # --- the strategy ---------------------------------------------------------------------------

    def _snapshot(self, now: float, load: FloatArray) -> None:
        """Keep this tick's counters until they are old enough to be seen."""
        counters = Counters(
            at=now,
            load=self.c_load.copy(),
            qos_ms=self.c_qos.copy(),
            local=self.c_local.copy(),
            forwarded=self.c_out.copy(),
            received=self.c_in.copy(),
            landed_new=self.c_landed.copy(),
        )
        self._seen.append((counters, measured_busy(load, self.capacity)))
        delay = self.sc.controller.feedback_delay_s
        while len(self._seen) > 1 and self._seen[1][0].at <= now - delay:
            self._seen.popleft()

    def observe(self, now: float) -> Observation:
        c = self.cohorts
        if not self._seen:
            self._snapshot(now, c.load())
        counters, busy = self._seen[0]
        return Observation(
            now=now,
            world=self.world,
            load=busy,
            capacity=self.capacity,
            alive=self.alive.copy(),
            catchment=self.catchment.copy(),
            home=self.home.copy(),
            withdrawn=frozenset(self.withdrawn),
            dns_target=self.dns_target.copy(),
            landed=c.landed(),
            region_active=c.anyc.copy(),
            counters=counters,
            true_rates=self.rates,
            shares=c.shares(),
        )

    def apply(self, action: Action, now: float) -> None:
        m, osc = self.metrics, self.metrics.oscillations
        m.buckets_changed += action.buckets_changed
        m.policy_changes += action.policy_changes
        if action.shares is not None:
            old = self.cohorts.shares()
            new = {k: v for k, v in action.shares.items() if v > 0.0}
            for key in old.keys() | new.keys():
                osc.change(("share", *key), old.get(key, 0.0), new.get(key, 0.0), now)
            self.cohorts.set_shares(new)
        lo, hi = self.sc.controller.bgp_delay_s
        for wd, pairs in ((True, action.withdraw), (False, action.announce)):
            for r, p in pairs:
                if ((r, p) in self.withdrawn) == wd:
                    continue
                (self.withdrawn.add if wd else self.withdrawn.discard)((r, p))
                osc.change(("bgp", r, p), float(not wd), float(wd), now)
                self._seq += 1
                at = now + float(self.rng.uniform(lo, hi))
                heapq.heappush(self.pending, (at, self._seq, r, p, wd))
        for r, target in action.dns.items():
            self._steer(r, target, now)

    def _dns_frac(self, now: float) -> FloatArray:
        ttl = self.sc.controller.dns_ttl_s
        return np.asarray(np.clip(self.dns_from + self.dns_dir * (now - self.dns_t0) / ttl, 0, 1))

    def _steer(self, r: int, target: int, now: float) -> None:
        """Answers change now; resolvers' caches expire uniformly over one TTL."""
        frac = float(self._dns_frac(now)[r])
        cur = int(self.dns_target[r])
        if target < 0:
            if cur < 0 or self.dns_dir[r] < 0:
                return
            self.dns_from[r], self.dns_t0[r], self.dns_dir[r] = frac, now, -1.0
            self.metrics.oscillations.change(("dns", r), 1.0, 0.0, now)
            return
        if cur >= 0 and (cur != target and frac > 0.0):
            return  # still draining answers to another PoP: wait
        if not self.alive[target] or (cur == target and self.dns_dir[r] > 0):
            return
        self.dns_target[r] = target
        self.dns_from[r], self.dns_t0[r], self.dns_dir[r] = frac, now, 1.0
        w = self.world
        ri = np.array([r])
        self.dns_added_ms[r] = float(
            w.client_latency_ms(ri, np.array([target]))[0]
            - w.client_latency_ms(ri, self.catchment[ri])[0]
        )
        self.metrics.oscillations.change(("dns", r), 0.0, 1.0, now)

    # --- the loop -------------------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> RunResult:
        sc = self.sc
        dt = sc.tick_s
        n_ticks = round(sc.duration_s / dt)
        next_call = 0.0
        next_sample = 0.0
        ev = 0
        report_every = max(1, round(600.0 / dt))
        c, m = self.cohorts, self.metrics
        c.warm_start(self.demand.rates(0.0), self.catchment, dt)
        for k in range(n_ticks):
            now = k * dt
            while ev < len(self.events) and self.events[ev][0] <= now:
                self.events[ev][1]()
                ev += 1
            if self.pending and self.pending[0][0] <= now:
                self._apply_pending(now)
            self.rates = self.demand.rates(now)
            if now >= next_call:
                self.apply(self.strategy.step(self.observe(now), now), now)
                next_call = now + self.strategy.interval_s
            dns_on = bool((self.dns_target >= 0).any())
            frac = self._dns_frac(now) * (self.dns_target >= 0) if dns_on else None
            c.step(dt, self.rates, self.catchment, np.maximum(self.dns_target, 0), frac)
            self._account(dt, frac)
            load = c.load()
            cap = self.capacity
            self.c_qos += self.queue.step(load, cap, dt) * dt
            util = np.divide(load, cap, out=np.zeros_like(load), where=cap > 0.0)
            m.tick(dt, util)
            self._snapshot(now + dt, load)
            if now >= next_sample:
                m.sample(now, util)
                next_sample += sc.sample_s
            if progress is not None and (k + 1) % report_every == 0:
                progress(report_every * dt)
            if k % 60 == 0:
                c.prune()
        if progress is not None and n_ticks % report_every:
            progress((n_ticks % report_every) * dt)
        active = c.active()
        led = c.ledger
        err = float(
            np.abs(led.arrived - led.done - led.broken - led.lost - active).max()
            / max(1.0, float(led.arrived.sum()))
        )
        return RunResult(
            strategy=self.strategy.name,
            summary=m.summary(led, active, sc.duration_s),
            sample_t=np.array(m.sample_t),
            utilisation=m.utilisation_samples(),
            overload_per_pop=m.overload_per_pop,
            lat_hist=m.lat_hist,
            conservation_error=err,
        )

    def _account(self, dt: float, dns_frac: FloatArray | None) -> None:
        """Counters the controller reads, and the latency paid by moved new connections."""
        c, m, cost = self.cohorts, self.metrics, self.cost
        m.arrived(self.rates.sum(axis=0) * dt)
        self.c_landed += c.landed_arrivals
        if c.arc_n.size:
            out, rec = c.forwarded_out(), c.received()
            self.c_out += out * cost * dt
            self.c_in += rec * cost * dt
            arc_ms = self.world.latency_ms[c.arc_l, c.arc_p]
            live = c.alive[c.arc_p]
            m.moved(c.arc_t[live], arc_ms[live], c.arc_arrivals[live])
        self.c_local += (c.local + c.direct) * cost * dt
        self.c_load += measured_busy(c.load(), self.capacity) * dt  # what /proc/stat shows
        nt = self.world.n_tiers
        if dns_frac is not None:
            on = np.flatnonzero(dns_frac > 0.0)
            steered = self.rates[on] * dt * dns_frac[on, None] * c.steerable
            m.moved(
                np.tile(np.arange(nt), on.size),
                np.repeat(self.dns_added_ms[on], nt),
                steered.ravel(),
            )
        if self._moved_regions.size:
            r = self._moved_regions
            share = 1.0 if dns_frac is None else 1.0 - dns_frac[r, None] * c.steerable
            m.moved(
                np.tile(np.arange(nt), r.size),
                np.repeat(self._moved_ms, nt),
                (self.rates[r] * dt * share).ravel(),
            )


def run_strategy(
    scenario: Scenario, world: World, strategy: Strategy, progress: Progress | None = None
) -> RunResult:
    """Run ``strategy`` on ``world`` for the scenario's duration.

    What exists before the run (the world, the network description, the services' state) lives
    as long as it: frozen out of the garbage collector for the run, so that its full collections
    (one every few minutes of a day's run) do not scan it again and again. And a round makes and
    drops thousands of messages (a status per PoP...): the youngest generation is collected every
    ``GC_YOUNG`` objects, not every 700, or each round's survive into the older ones to be
    scanned again there (~10 % of a popshift run).
    """
    engine = Engine(scenario, world, strategy)
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        return engine.run(progress)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
