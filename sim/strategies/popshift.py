"""popshift itself: the services' own pure functions, wired as Kafka would wire them.

Per round (``analytics_interval_s``):
1. analytics: each live PoP's load averaged over the rule window, on identical servers, is the
   window of ``services.analytics.rules``; its identification rules with hysteresis (``step``,
   over every PoP at once: services/analytics/batch.py) return a ``PopStatus`` when one is due
   (on a change or every ``refresh_s``);
2. forwarders: every ``stats_interval_s`` each PoP reports per-tier counters (work in packets at
   the PoP's own ratio), all PoPs in one ``CounterRound`` (what their ``DataplaneStats`` would
   carry, as arrays; the engine folds it as it would each message);
3. policy engine: statuses and stats go through ``services.policy_engine.engine.decide``, then a
   ``Tick`` returns the ``PolicyEvent`` s (damped, with reasons);
4. table writers: each event goes to its source PoP's ``services.table_writer.writer`` state
   (``on_policy`` -> ``apply_policy`` on 2^N buckets, invariants checked) and is committed; the
   share that reaches the data plane is what the buckets say, and churn is the buckets changed.

A PoP that went dark sends no heartbeats: as the central ingest would, the simulated analytics
then sees no healthy capacity there (the ingest marks silent servers down after K intervals, well
within one 5 s round), and the engine cuts every share sent to it at its next tick, undamped.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from schemas.messages import (
    PolicyEvent,
    PopLoad,
    PopStatusRow,
    ServerLoad,
)
from services.analytics.batch import Hystereses, Uniform, step_many
from services.analytics.config import Band, PopRules
from services.policy_engine.damping import DampingConfig
from services.policy_engine.engine import (
    CounterRound,
    EngineConfig,
    EngineState,
    StatusRound,
    Tick,
    decide,
)
from services.table_writer import writer
from services.table_writer.table import Server, forwarded_counts, new_table
from sim.recording import ConsoleRecording
from sim.scenario import Scenario
from sim.strategies.base import Action, Counters, Observation, ShareKey
from sim.world import World

QOS_SHED_MS, QOS_CALM_MS = 250.0, 150.0
"""deploy/config/analytics.yaml's qos_p95_over_ms band."""
PACKETS_PER_CORE_S = 50_000.0
"""Median packets a core processes per second; each PoP's own figure is drawn around it
(lognormal, sigma 0.3): the engine must learn a PoP's packets-to-cores ratio, not assume it."""
DRAIN_PERIOD_S = 1800.0
"""Longer than any tier's connections live (e^-15 of them remain), so a cleared drain breaks
none; the simulator does not model connections outliving it."""


@dataclass(frozen=True)
class PopshiftKnobs:
    """The services' settings the simulator uses (their own defaults unless a scenario says)."""

    rules: PopRules
    engine: EngineConfig
    stats_interval_s: float
    table_bits: int


def knobs(world: World, scenario: Scenario) -> PopshiftKnobs:
    ctl = scenario.controller
    defaults = PopRules()
    return PopshiftKnobs(
        # deploy/config/analytics.yaml's shed rules: utilisation, and the probes' latency that
        # still shows how far over a saturated PoP is
        rules=PopRules(
            target_utilisation=ctl.target_utilisation,
            shed=defaults.shed.model_copy(
                update={"qos_p95_over_ms": Band(enter=QOS_SHED_MS, exit=QOS_CALM_MS)}
            ),
        ),
        engine=EngineConfig(
            tier_mix={t.id: t.demand_share for t in world.tiers},
            damping=DampingConfig(),
            tick_s=ctl.analytics_interval_s,  # the engine ticks once a round: lease = 3 rounds
            # a share's effect shows over about a connection lifetime: the demand-weighted mean
            effect_lag_s=sum(t.demand_share * t.mean_lifetime_s for t in world.tiers),
            # Statuses come once a round: a silent bus is three rounds without one (as 3 s is
            # three of the live analytics' 1 s publications).
            bus_silence_s=3.0 * ctl.analytics_interval_s,
        ),
        stats_interval_s=10.0,
        table_bits=ctl.table_bits,
    )


class PopshiftStrategy:
    name = "popshift"

    def __init__(self, world: World, scenario: Scenario) -> None:
        self.world = world
        self.knobs = knobs(world, scenario)
        self.interval_s = scenario.controller.analytics_interval_s
        self.network = world.network_config(
            scenario.controller.target_utilisation, scenario.world.cores_per_server
        )
        self.engine = EngineState(self.network, self.knobs.engine)
        self.tier_ids = [t.id for t in world.tiers]
        self.tier_index = {tid: k for k, tid in enumerate(self.tier_ids)}
        self.pop_index = {n: i for i, n in enumerate(world.pop_names)}
        self.cores_per_server = float(scenario.world.cores_per_server)
        self.rng = np.random.default_rng([scenario.seed, 0x5EED])
        self.noise = scenario.controller.measurement_noise
        self.packets_per_core = PACKETS_PER_CORE_S * self.rng.lognormal(
            0.0, 0.3, len(world.pop_names)
        )
        self._hyst: Hystereses | None = None
        self._history: deque[Counters] = deque()
        self._last_stats = -np.inf
        self._writers: dict[int, writer.WriterState] = {}
        self._servers: dict[int, int] = {}
        self._shares: dict[ShareKey, float] = {}
        self.events: list[PolicyEvent] = []
        self._issued: dict[str, list[tuple[int, str, float]]] = {}  # source -> shares in force
        self.statuses = 0
        self.recording: ConsoleRecording | None = None  # sim/recording.py, for the console
        self._churn = 0
        self.wall_s = {"analytics": 0.0, "policy_engine": 0.0, "table_writer": 0.0}
        """Wall seconds spent in each service's code (and its inputs), for the benchmark."""

    # --- analytics ------------------------------------------------------------------------------

    def _window(self, obs: Observation) -> tuple[Counters, float]:
        """The snapshot one rule window before the newest seen (or the oldest kept), its age."""
        window = self.knobs.rules.window_s
        newest = obs.counters
        hist = self._history
        hist.append(newest)
        while len(hist) > 1 and hist[1].at <= newest.at - window:
            hist.popleft()
        return hist[0], newest.at - hist[0].at

    def _noisy(self, values: np.ndarray, samples: float) -> np.ndarray:
        """A window's mean of ``samples`` 1 s samples, each off by ``measurement_noise``."""
        sd = self.noise / np.sqrt(max(1.0, samples))
        return np.asarray(values * (1.0 + self.rng.normal(0.0, sd, values.shape)))

    def _analytics(self, obs: Observation) -> list[PopStatusRow]:
        then, age = self._window(obs)
        c = obs.counters
        if age > 0.0:
            load = (c.load - then.load) / age
            qos: np.ndarray | None = (c.qos_ms - then.qos_ms) / age
        else:
            load, qos = obs.load, None
        load = np.clip(self._noisy(load, age), 0.0, obs.capacity)  # busy cores never exceed it
        qos = self._noisy(qos, age) if qos is not None else None
        alive = obs.alive
        cap = np.where(alive, obs.capacity, 0.0)
        servers = np.maximum(1, np.rint(cap / self.cores_per_server)).astype(np.int64)  # _healthy
        window = Uniform(  # dark: the ingest marks its silent servers down, no capacity is left
            pops=self.world.pop_names,
            capacity=cap,
            load=np.where(alive, load, 0.0),
            servers=np.where(alive, servers, 0),
            qos_p95_ms=np.where(alive, qos, np.nan) if qos is not None else None,
        )
        self._hyst, statuses = step_many(self._hyst, window, obs.now, self.knobs.rules)
        return statuses

    def _healthy(self, pop: int, capacity: float) -> int:
        return max(1, round(capacity / self.cores_per_server))

    def _stats(self, obs: Observation) -> CounterRound:
        """The forwarders' packet counters: work at each PoP's own packets-per-core ratio, of
        the live PoPs' edges, as the arrays a round of dataplane-stats.v1 would carry."""
        c = obs.counters
        ppc = self.packets_per_core[:, None]
        counts = np.stack([c.local * ppc, c.forwarded * ppc, c.received * ppc], axis=2)
        alive = np.flatnonzero(obs.alive)
        names = self.world.pop_names
        return CounterRound(
            node="edge",
            at=c.at,
            pops=[names[i] for i in alive.tolist()],
            counts=counts[alive].astype(np.int64),
        )

    # --- table writers --------------------------------------------------------------------------

    def _writer(self, pop: int, obs: Observation) -> writer.WriterState:
        """The PoP's table writer, told its healthy servers (primaries follow capacity).

        A writer first seen here adopts day-one tables (as after a restart, from Redis): the
        network had tables before the simulation started, so building them is not churn.
        """
        n = self._healthy(pop, float(obs.capacity[pop]))
        state = self._writers.get(pop)
        if state is not None and self._servers.get(pop) == n:
            return state
        servers = self._server_list(pop, n)
        if state is None:
            state = writer.new_state(
                self.network, self.world.pop_names[pop], self.knobs.table_bits, DRAIN_PERIOD_S
            )
            table = new_table(
                [Server(str(s.address), s.capacity_cores) for s in servers],
                self.knobs.table_bits,
                obs.now,
            )
            for tier_id in self.tier_ids:
                writer.adopt(state, tier_id, list(table), 1, 0, {})
            self._writers[pop] = state
        if self._servers.get(pop) != n and obs.capacity[pop] > 0.0:
            self._servers[pop] = n
            load = PopLoad(
                pop=self.world.pop_names[pop],
                at=obs.now,
                servers=servers,
                healthy_capacity_cores=n * self.cores_per_server,
                combined_load_cores=0.0,
            )
            self._churn += self._commit(state, writer.on_servers(state, load, obs.now))
        return state

    def _server_list(self, pop: int, n: int) -> list[ServerLoad]:
        return [
            ServerLoad(
                server=f"s{k}",
                address=str(self.network.pops[pop].server_prefixes[0][k + 1]),
                capacity_cores=self.cores_per_server,
                utilisation=0.0,
            )
            for k in range(n)
        ]

    def _commit(self, state: writer.WriterState, writes: list[writer.Write]) -> int:
        changed = 0
        for w in writes:
            writer.commit(state, w)
            changed += len(w.changed)
        return changed

    def _realised(self, pop: int, state: writer.WriterState) -> None:
        """Shares as the data plane will apply them: buckets away to each PoP / 2^N."""
        size = float(1 << state.bits)
        for key in [k for k in self._shares if k[0] == pop]:
            del self._shares[key]
        for tier_id, tt in state.tables.items():
            for pop_id, count in forwarded_counts(tt.table).items():
                self._shares[(pop, self.tier_index[tier_id], pop_id - 1)] = count / size

    # --- the round ------------------------------------------------------------------------------

    def step(self, obs: Observation, now: float) -> Action:
        self._churn = 0
        clock = self.wall_s
        started = time.perf_counter()
        statuses = self._analytics(obs)
        decide(self.engine, StatusRound(statuses), now)
        self.statuses += len(statuses)
        if self.recording is not None:
            for status in statuses:
                self.recording.status(now, status)
        if now - self._last_stats >= self.knobs.stats_interval_s:
            self._last_stats = now
            decide(self.engine, self._stats(obs), now)
        analysed = time.perf_counter()
        _, events = decide(self.engine, Tick(), now)
        decided = time.perf_counter()
        for pop in list(self._writers):
            if obs.alive[pop]:
                self._writer(pop, obs)  # primaries follow a change of healthy servers
        for ev in events:
            pop = self.pop_index[ev.source]
            state = self._writer(pop, obs)
            writes = writer.on_policy(state, ev, now)
            if writes:  # a renewal (the same shares, a new lease) changes no table
                self._churn += self._commit(state, writes)
                self._realised(pop, state)
        self.events.extend(events)
        if self.recording is not None:
            for ev in events:
                self.recording.policy(now, ev)
        changes = 0  # renewals (the same shares under a new version and lease) are no change
        for ev in events:
            shares = [(s.tier, s.destination, s.share) for s in ev.shares]
            if self._issued.get(ev.source, []) != shares:
                changes += 1
            self._issued[ev.source] = shares
        clock["analytics"] += analysed - started
        clock["policy_engine"] += decided - analysed
        clock["table_writer"] += time.perf_counter() - decided
        if not changes and not self._churn:
            return Action()
        return Action(
            shares=dict(self._shares),
            buckets_changed=self._churn,
            policy_changes=changes,
        )
