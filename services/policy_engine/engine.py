"""The policy engine's core: ``decide(state, input, now) -> (state, events)``, with no I/O.

The Kafka adapter (service.py) and the simulator both feed it pop-status.v1 and
dataplane-stats.v1 messages, operator overrides and periodic :class:`Tick` s on their own clock,
and publish the :class:`PolicyEvent` s it returns. One event carries a source PoP's whole policy
(policies.v1 is compacted by source), with a rising version, an action (new / update / cancel,
(49), (86)) and the reason: the PoP and rule behind it and the loads expected after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from popshift.network import NetworkConfig
from popshift.silence import BusSilence
from schemas.messages import (
    MAX_REASON_CHARS,
    DataplaneStats,
    PolicyAction,
    PolicyEvent,
    PolicyReason,
    PopState,
    PopStatus,
    PopStatusRow,
    Share,
)
from services.policy_engine.damping import DampingConfig, ShareKey, Shares, damp
from services.policy_engine.model import (
    PopModel,
    TierRates,
    counter_rates_many,
    estimate_native,
    latency_matrix,
    native_from_counters,
    packet_costs,
)
from services.policy_engine.overrides import Overrides
from services.policy_engine.solver import (
    Budget,
    PopSpec,
    Problem,
    Solution,
    TierSpec,
    solve_with_budget,
)

SAME = 1e-6  # shares closer than this are the same share
LEASE_TICKS = 3
REACH_WEIGHT = 0.5  # each new measure of a share's reach moves the estimate half way
"""The default lease of a policy, in engine ticks: a policy is renewed every tick while the
engine's inputs for its source are fresh, so two renewals may be lost in a row."""


class UnknownPop(ValueError):
    """A message names a PoP that is not in the network description."""


LAPSED = "lapsed"
"""The rule of a cancel the engine sends when a source's lease ran out for want of a status."""


@dataclass(frozen=True)
class Tick:
    """Time to re-solve and emit what changed."""


@dataclass(frozen=True)
class SetOverrides:
    overrides: Overrides


@dataclass(frozen=True)
class CounterRound:
    """One node's counters at many PoPs at once, as arrays (the simulator's forwarders):
    folding it is folding each PoP's DataplaneStats (tested), without 300 messages a round.
    A node reports either this way or by messages, not both."""

    node: str
    at: float
    pops: list[str]
    counts: np.ndarray
    """int64 (pops, the network's tiers in order, 3): local, out (inter-PoP + second chance),
    received from peers, as model.py's ``_counts``."""


@dataclass(frozen=True)
class StatusRound:
    """Many pop-status messages handled at once (the simulator's analytics round): folding it
    is folding each of them in turn, one dispatch for all."""

    statuses: Sequence[PopStatus | PopStatusRow]


EngineInput = PopStatus | DataplaneStats | CounterRound | StatusRound | Tick | SetOverrides


@dataclass(frozen=True)
class EngineConfig:
    solve_budget: Budget = field(default_factory=Budget)
    status_max_age_s: float = 30.0
    stats_max_age_s: float = 30.0
    effect_lag_s: float = 5.0
    hop_cost_ms: float = 1.0
    max_candidates: int | None = 16
    tier_mix: Mapping[int, float] = field(default_factory=dict)
    damping: DampingConfig = field(default_factory=DampingConfig)
    tick_s: float = 1.0
    """How often the adapter (or the simulator) ticks the engine."""
    lease_s: float | None = None
    """How long a policy is in force after it is issued (``expires_at = issued_at + lease``);
    None = ``LEASE_TICKS`` x ``tick_s``. The engine renews a policy once a third of its lease has
    passed, while the source's pop-status is fresh; a writer drops a lapsed policy to local."""

    calibrate_below: float = 0.9
    """A PoP's packets-to-cores ratio is learned only below this utilisation (model.py)."""
    calibrate_weight: float = 0.2
    integral_gain: float = 0.5
    """Share of a flagged PoP's measured excess added to its demand estimate per pop-status
    while the excess persists (see :func:`_integrate`)."""
    max_boost: float = 0.10
    """The integral lowers a shedder's target by at most this share of its capacity: it corrects
    a model error, it does not replace the model."""
    reach_after_s: float | None = None
    """A share's reach (the part of native demand it moves, model.py) is measured once it has
    held still this long, about the lifetime of most new connections; None: shares are taken to
    reach all of it (right when connections are short next to the engine's reaction time)."""
    settle_tolerance: float = 0.03
    """A load still falling by more than this share of capacity between two pop-statuses is
    the last change still taking effect: the integral waits."""

    resolve_band: float = 0.02
    """Share of a PoP's capacity its native estimate may move, per tier, since the last solve
    before the engine solves again (see :func:`_solve`); 0 = whenever one moves at all. At 1 %
    a busy shedder's estimate crossed it with every counter report (noise: the day's busy hours
    solved on 55 % of ticks, at 2 % on 10 %), for figures the same within a few %."""

    bus_silence_s: float = 3.0
    bus_outage_grace_s: float = 120.0
    """While no input at all arrives (popshift/silence.py), leases stop ageing, this long at
    most: a Kafka outage neither cancels nor lapses a policy."""

    @property
    def lease(self) -> float:
        return self.lease_s if self.lease_s is not None else LEASE_TICKS * self.tick_s


@dataclass
class Policy:
    shares: Shares
    version: int
    issued_at: float
    expires_at: float | None = None  # None: no lease (adopted from before leases)
    changed_at: float | None = None  # when the shares last changed (the hold-off's clock)
    reason: PolicyReason | None = None
    epoch: int = 0

    @property
    def last_change(self) -> float:
        return self.issued_at if self.changed_at is None else self.changed_at


@dataclass
class EngineState:
    network: NetworkConfig
    config: EngineConfig = field(default_factory=EngineConfig)
    overrides: Overrides = field(default_factory=Overrides)
    pops: dict[str, PopModel] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    native: dict[str, dict[int, float]] = field(default_factory=dict)
    history: dict[str, list[Policy]] = field(default_factory=dict)
    version: int = 0
    epoch: int = 0
    """The leadership epoch stamped on every policy (the adapter sets it when it takes the lead;
    :func:`restore` raises it to the newest seen, the floor of the next one)."""
    silence: BusSilence = field(init=False)
    _latency: tuple[tuple[str, ...], np.ndarray] | None = None
    _solved: _Solved | None = None
    _counters: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Per node of a :class:`CounterRound`: each PoP's last ``at`` (NaN: never) and counts."""
    _round_rates: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Per node of a :class:`CounterRound`: when each PoP's rates were measured (NaN: never)
    and the rates, (PoPs, tiers, 3) as ``counter_rates_many`` gives them; a message-reporting
    node's are in its PoP's ``PopModel.node_rates`` instead."""
    _row: dict[str, int] = field(init=False)
    """Each PoP's row in the arrays above: its place in the network's list."""
    _rows: tuple[tuple[str, ...], np.ndarray] | None = None
    """The rows of the last list of PoPs asked for (the fresh ones: the same most ticks)."""
    _messaged: set[str] = field(default_factory=set)
    """PoPs with a node that reports by DataplaneStats messages (PopModel.node_rates)."""

    def __post_init__(self) -> None:
        self.silence = BusSilence(self.config.bus_silence_s, self.config.bus_outage_grace_s)
        for name in self.network.pop_names:
            self.pops.setdefault(name, PopModel(name))
        self._row = {name: i for i, name in enumerate(self.network.pop_names)}

    def adopt(self, source: str, policy: Policy, keep_s: float) -> None:
        """Make ``policy`` the source's current one; keep recent ones for load corrections."""
        self.policies[source] = policy
        history = [*self.history.get(source, []), policy]
        cutoff = policy.issued_at - keep_s
        while len(history) > 1 and history[1].issued_at <= cutoff:
            history.pop(0)
        self.history[source] = history

    def rows(self, names: list[str]) -> np.ndarray:
        """The rows of ``names`` in the per-PoP arrays, cached while they stay the same."""
        key = tuple(names)
        if self._rows is None or self._rows[0] != key:
            self._rows = (key, np.array([self._row[n] for n in names], dtype=np.int64))
        return self._rows[1]

    def latency(self, names: list[str]) -> np.ndarray:
        """The latency matrix of ``names``, cached while the set of fresh PoPs stays the same."""
        key = tuple(names)
        if self._latency is None or self._latency[0] != key:
            self._latency = (key, latency_matrix(self.network, names))
        return self._latency[1]


def restore(state: EngineState, events: Iterable[PolicyEvent]) -> EngineState:
    """Adopt the policies already on the compacted topic, so a restart changes nothing."""
    for ev in events:
        state.version = max(state.version, ev.version)
        state.epoch = max(state.epoch, ev.epoch)
        known = state.policies.get(ev.source)
        if known is not None and (known.epoch, known.version) >= (ev.epoch, ev.version):
            continue
        shares = {(s.tier, s.destination): s.share for s in ev.shares}
        policy = Policy(
            shares, ev.version, ev.issued_at, ev.expires_at, reason=ev.reason, epoch=ev.epoch
        )
        state.adopt(ev.source, policy, keep_s=0.0)
    return state


def decide(
    state: EngineState, event: EngineInput, now: float
) -> tuple[EngineState, list[PolicyEvent]]:
    """Fold one input into the state; a :class:`Tick` may return policy events to publish."""
    if isinstance(event, PopStatus | DataplaneStats):
        state.silence.heard(now)
        model = state.pops.get(event.pop)
        if model is None:
            raise UnknownPop(f"unknown PoP {event.pop!r}")
        if isinstance(event, PopStatus):
            model.observe_status(event)
        else:
            model.observe_stats(event)
            state._messaged.add(event.pop)
        return state, []
    if isinstance(event, StatusRound):
        if event.statuses:
            state.silence.heard(now)
        pops = state.pops
        for status in event.statuses:
            model = pops.get(status.pop)
            if model is None:
                raise UnknownPop(f"unknown PoP {status.pop!r}")
            model.observe_status(status)
        return state, []
    if isinstance(event, CounterRound):
        state.silence.heard(now)
        _observe_counters(state, event)
        return state, []
    if isinstance(event, SetOverrides):
        state.overrides = event.overrides.check(state.network)
        return state, []
    return state, _tick(state, now)


def _observe_counters(state: EngineState, batch: CounterRound) -> None:
    """PopModel.observe_stats for every PoP of the round, kept as arrays: a late or duplicate
    report is dropped, a first one only remembered, a counter that went down is a restart."""
    index = state._row
    unknown = [p for p in batch.pops if p not in index]
    if unknown:
        raise UnknownPop(f"unknown PoP {unknown[0]!r}")
    rows = np.array([index[p] for p in batch.pops], dtype=np.int64)
    shape = (len(index), len(state.network.tiers), 3)
    last = state._counters.get(batch.node)
    if last is None:
        last = (np.full(shape[0], np.nan), np.zeros(shape, np.int64))
        state._counters[batch.node] = last
        state._round_rates[batch.node] = (np.full(shape[0], np.nan), np.zeros(shape))
    last_at, last_counts = last
    then = last_at[rows]
    rates = counter_rates_many(then, last_counts[rows], batch.at, batch.counts)
    take = ~(then >= batch.at)  # never seen (NaN) or older
    last_at[rows[take]] = batch.at
    last_counts[rows[take]] = batch.counts[take]
    diffed = then < batch.at
    rates_at, node_rates = state._round_rates[batch.node]
    rates_at[rows[diffed]] = batch.at
    node_rates[rows[diffed]] = rates[diffed]


def fresh_rates(state: EngineState, names: list[str], now: float) -> tuple[np.ndarray, np.ndarray]:
    """Per PoP of ``names`` and tier of the network, (local, forwarded, received) packets a second
    summed over the nodes that reported within ``stats_max_age_s``, and which PoPs have any."""
    max_age = state.config.stats_max_age_s
    column = {t.id: j for j, t in enumerate(state.network.tiers)}
    out = np.zeros((len(names), len(column), 3))
    has = np.zeros(len(names), dtype=bool)
    messaged = state._messaged
    for i, name in enumerate(names if messaged else ()):
        if name in messaged:  # nodes that report by message (the service's forwarders)
            for tier, r in state.pops[name].tier_rates(now, max_age).items():
                has[i] = True
                if (j := column.get(tier)) is not None:
                    out[i, j] = r
    if state._round_rates:  # nodes that report in rounds (the simulator's)
        rows = state.rows(names)
        for rates_at, rates in state._round_rates.values():
            ok = now - rates_at[rows] <= max_age  # never (NaN) is not fresh
            out[ok] += rates[rows[ok]]
            has |= ok
    return out, has


def _tiers(network: NetworkConfig) -> list[TierSpec]:
    return [
        TierSpec(t.id, t.forwardable, t.max_added_latency_ms, t.priority) for t in network.tiers
    ]


def _in_effect(history: list[Policy], at: float) -> Shares:
    """The shares whose effect a load measured at ``at`` shows (issued ``effect_lag_s`` before)."""
    shares: Shares = {}
    for policy in history:
        if policy.issued_at > at:
            break
        shares = policy.shares
    return shares


class Demand(NamedTuple):
    """Each PoP's native demand as the solver sees it: per tier what its shares can move
    (reach x native), and the load that stays whatever they say (model.py, "reach")."""

    movable: dict[str, dict[int, float]]
    stays: dict[str, float]
    loads: dict[str, float]
    """Each PoP's native load, what stays plus what can move: summed once, read every tick by
    the solver's problem, the kept policies' check and the reasons' expected loads."""
    movable_rows: np.ndarray | None = None
    """``movable`` as an array (PoPs in its order, the network's tiers): what the reuse of the
    last solve compares, every PoP every tick."""

    def native_load(self, name: str) -> float:
        return self.loads.get(name, 0.0)


def _demand(state: EngineState, native: dict[str, dict[int, float]], rows: np.ndarray) -> Demand:
    """``native`` (``rows``: the same as an array, in its order) as the solver sees it."""
    tier_ids = [t.id for t in state.network.tiers]
    total = np.zeros(len(native))
    for j in range(len(tier_ids)):  # tier by tier, as sum() adds a PoP's
        total = total + rows[:, j]
    loads = dict(zip(native, total.tolist(), strict=True))
    movable: dict[str, dict[int, float]] = native
    stays: dict[str, float] = {}
    reaching = [(i, name) for i, name in enumerate(native) if state.pops[name].reach]
    if reaching:  # the lab: part of a forwarded tier stays whatever the shares say
        movable, rows = dict(native), rows.copy()
        for i, name in reaching:
            reach, tiers = state.pops[name].reach, native[name]
            movable[name] = {t: reach.get(t, 1.0) * cores for t, cores in tiers.items()}
            stays[name] = sum(tiers.values()) - sum(movable[name].values())
            loads[name] = stays[name] + sum(movable[name].values())
            rows[i] = [movable[name][t] for t in tier_ids]
    return Demand(movable, stays, loads, rows)


def _observe_reach(
    state: EngineState, model: PopModel, rates: Mapping[int, TierRates], now: float
) -> None:
    after = state.config.reach_after_s
    policy = state.policies.get(model.name)
    if after is None or policy is None or not policy.shares:
        model.reach.clear()
        return
    if now - policy.last_change < after:
        return  # connections from before the last change still show in the counters
    if model.status is None or model.status.utilisation >= state.config.calibrate_below:
        return  # saturated: retries and queued connections make the reach look too small
    totals: dict[int, float] = {}
    for (tier, _), x in policy.shares.items():
        totals[tier] = totals.get(tier, 0.0) + x
    known = set(model.reach)
    model.update_reach(rates, totals, REACH_WEIGHT)
    if set(model.reach) - known:
        # The integral's boost made up for what the reach now explains: keeping both over-sheds.
        model.boost = 0.0


def _estimate(
    state: EngineState, fresh: list[str], now: float
) -> tuple[dict[str, dict[int, float]], np.ndarray]:
    """Native demand per tier of every fresh PoP (model.py explains how), by name and as an
    array (``fresh``'s order, the network's tiers).

    Without counters the measured load is corrected by the policies in effect when it was
    measured, not by the latest ones, whose effect the measurement cannot show yet.
    """
    tier_ids = [t.id for t in state.network.tiers]
    prev = state.native
    cfg = state.config
    models = [state.pops[name] for name in fresh]
    statuses = [m.status for m in models if m.status is not None]
    assert len(statuses) == len(models)  # fresh: every one has a status
    rates, has = fresh_rates(state, fresh, now)
    processed = np.zeros(len(fresh))
    for j in range(len(tier_ids)):  # tier by tier, as the messages' rates are summed
        processed = processed + (rates[:, j, 0] + rates[:, j, 2])
    learned = [np.nan if m.cores_per_packet is None else m.cores_per_packet for m in models]
    cost, learned_after = packet_costs(
        np.array([st.load_cores for st in statuses]),
        processed,
        np.array([st.utilisation for st in statuses]),
        np.array(learned, dtype=np.float64),
        cfg.calibrate_below,
        cfg.calibrate_weight,
    )
    for m, k in zip(models, learned_after.tolist(), strict=True):
        m.cores_per_packet = None if math.isnan(k) else k
    native = native_from_counters(cost, rates)
    by_counters = native.tolist()
    counted, measured = (processed > 0.0).tolist(), has.tolist()
    out: dict[str, dict[int, float]] = {}
    for i, name in enumerate(fresh):
        if counted[i]:
            out[name] = dict(zip(tier_ids, by_counters[i], strict=False))  # a row per tier
            continue
        status = statuses[i]
        moved_out = moved_in = 0.0
        if not measured[i]:
            at = status.at - cfg.effect_lag_s
            for src, history in state.history.items():
                for (tier, dst), x in _in_effect(history, at).items():
                    if src == name:
                        moved_out += x * prev.get(src, {}).get(tier, 0.0)
                    elif dst == name:
                        moved_in += x * prev.get(src, {}).get(tier, 0.0)
        out[name] = estimate_native(
            status.load_cores, {}, tier_ids, cfg.tier_mix, moved_out, moved_in
        )
        native[i] = [out[name][t] for t in tier_ids]
    if cfg.reach_after_s is not None:  # off (the simulator): shares reach all of their part
        for i, model in enumerate(models):
            row = {t: TierRates(*rates[i, j].tolist()) for j, t in enumerate(tier_ids)}
            _observe_reach(state, model, row if measured[i] else {}, now)
    return out, native


def _shedders(state: EngineState, names: Iterable[str]) -> set[str]:
    """Of ``names``, those analytics flagged or whose own relief is still in force: the one
    notion of "sheds" that the solver, the integral and the reasons share. A PoP analytics calls
    neutral is never asked to start shedding; one whose policy brought it back below the
    threshold keeps that policy while its demand still needs it. A relay's onward shares (it
    receives from a shedder) are the cascade's, not its own shedding."""
    receiving = {
        dst
        for src, policy in state.policies.items()
        for (_, dst), x in policy.shares.items()
        if x > 0.0 and dst != src
    }
    out = set()
    for name in names:
        status = state.pops[name].status
        policy = state.policies.get(name)
        if (status is not None and status.state is PopState.SHED) or (
            policy is not None and bool(policy.shares) and name not in receiving
        ):
            out.add(name)
    return out


def _integrate(
    state: EngineState,
    fresh: list[str],
    shedders: set[str],
    unchanged: set[str],
    moving: set[str],
    now: float,
) -> None:
    """Integral action on the measured excess, once per new pop-status of each PoP, for the
    next round.

    The demand estimate re-measures each PoP's cost per packet every round, so a share that
    proved too small is usually corrected by the next solve. When it is not (a saturated PoP
    whose ratio was never learned, no counters, load that packets do not explain), the solver
    would hold a flagged PoP's shares still while it stays over target: then a share of the
    measured excess accrues in its ``boost``, by which the next solve aims below the target, so
    it keeps moving, round after round, until the excess is gone. Only once the shares have
    held still for ``effect_lag_s`` and the load is no longer falling (the last change has
    shown), only while the solver moves some of its traffic (anti-windup: no receiver within
    reach takes anything, not even in its overload band). Between the target and the flag
    it holds; an unflagged PoP measured below its target gives it back gradually (so a boost
    accrued while the load was still catching up does not over-shed for good), and it ends
    with the PoP's shedding.
    """
    cfg = state.config
    for name in fresh:
        model = state.pops[name]
        status = model.status
        assert status is not None
        if model.integrated_at is not None and status.at <= model.integrated_at:
            continue
        previous, model.previous_load = model.previous_load, status.load_cores
        model.integrated_at = status.at
        if name not in shedders:
            model.boost = 0.0
            continue
        policy = state.policies.get(name)
        if name not in unchanged or policy is None or now - policy.last_change < cfg.effect_lag_s:
            continue  # the estimate is still moving it, or the last change has not shown yet
        cap = status.capacity_cores
        if previous is not None and previous - status.load_cores > cfg.settle_tolerance * cap:
            continue  # still falling: the last change is still taking effect
        target = state.network.pop(name).target_utilisation * cap
        # The PoP's own excess, not its hot servers' (analytics' excess when only servers are
        # over): a server hot with long-lived connections cools by no share, and integrating its
        # excess would wind up until the PoP sheds far below its target.
        excess = min(status.excess_cores, status.load_cores - target)
        if status.state is PopState.SHED and excess > 0.0:
            if name in moving:  # some receiver takes something: aiming lower can move more
                model.boost += cfg.integral_gain * excess
                model.boost = min(model.boost, cfg.max_boost * cap)
        elif status.state is not PopState.SHED and status.load_cores < target:
            model.boost *= 1.0 - cfg.integral_gain  # below target: give it back, gradually


def _problem(
    state: EngineState,
    fresh: list[str],
    demand: Demand,
    shedders: set[str],
) -> Problem:
    drained = set(state.overrides.drain)
    pops = []
    for name in fresh:
        status = state.pops[name].status
        assert status is not None
        target = state.network.pop(name).target_utilisation
        cap = status.capacity_cores
        if name not in shedders and cap > 0.0:
            # Over target but not flagged: it is not asked to shed (nor can it take anything).
            target = max(target, demand.native_load(name) / cap)
        elif cap > 0.0:  # the integral's correction: aim lower than the model says suffices
            target -= state.pops[name].boost / cap
        pops.append(
            PopSpec(
                name=name,
                capacity=status.capacity_cores,
                target_utilisation=target,
                native=demand.movable[name],
                base_load=demand.stays.get(name, 0.0),
                drained=name in drained,
            )
        )
    fresh_set = set(fresh)
    return Problem(
        pops=pops,
        tiers=_tiers(state.network),
        latency_ms=state.latency(fresh),
        pinned={k: v for k, v in state.overrides.pinned.items() if {k[1], k[2]} <= fresh_set},
        forbidden=state.overrides.forbidden,
        hop_cost_ms=state.config.hop_cost_ms,
        max_candidates=state.config.max_candidates,
    )


@dataclass(frozen=True)
class _Solved:
    """The inputs of the last solve that its answer depends on, and the answer."""

    fresh: list[str]
    shedders: set[str]
    overrides: Overrides
    capacity: np.ndarray  # per fresh PoP
    boost: np.ndarray  # per fresh PoP
    demand: Demand
    solution: Solution

    def still_fits(
        self,
        state: EngineState,
        fresh: list[str],
        demand: Demand,
        shedders: set[str],
        capacity: np.ndarray,
        boost: np.ndarray,
    ) -> bool:
        if fresh != self.fresh or shedders != self.shedders or state.overrides != self.overrides:
            return False
        if not np.array_equal(capacity, self.capacity):
            return False
        near = state.config.resolve_band * capacity
        # the integral grown: it acts; given back: within the band
        if (boost > self.boost).any() or (self.boost - boost > near).any():
            return False
        now, then = demand.movable_rows, self.demand.movable_rows
        if now is None or then is None or (np.abs(now - then) > near[:, None]).any():
            return False
        stays_now, stays_then = demand.stays, self.demand.stays
        if stays_now or stays_then:
            for name, cores in zip(fresh, near.tolist(), strict=True):
                if abs(stays_now.get(name, 0.0) - stays_then.get(name, 0.0)) > cores:
                    return False
        return True


def _solve(state: EngineState, fresh: list[str], demand: Demand, shedders: set[str]) -> Solution:
    """The solver's answer, or the last one while nothing it depends on has moved: the same fresh
    PoPs and shedders, the same overrides and capacities, no integral boost grown, and every
    native estimate (movable per tier, and what stays) within ``resolve_band`` of its capacity of
    the estimate then.

    Measurement noise moves the estimates a little every tick; solving again for it costs
    milliseconds a tick and, with ``_still_good`` keeping what still does its job, changes next
    to nothing. A new flag, a dead PoP, an override or the integral acting solves at once."""
    models = [state.pops[name] for name in fresh]
    capacity = np.array([m.status.capacity_cores if m.status else 0.0 for m in models])
    boost = np.array([m.boost for m in models])
    last = state._solved
    if last is not None and last.still_fits(state, fresh, demand, shedders, capacity, boost):
        return last.solution
    solution = solve_with_budget(
        _problem(state, fresh, demand, shedders), state.config.solve_budget
    )
    # this tick's lists and estimates: made for it, changed by nobody
    state._solved = _Solved(fresh, shedders, state.overrides, capacity, boost, demand, solution)
    return solution


def _dead(state: EngineState) -> set[str]:
    """PoPs whose latest pop-status shows no healthy capacity (every server down, or dark)."""
    return {
        name
        for name, model in state.pops.items()
        if model.status is not None and model.status.capacity_cores <= 0.0
    }


@dataclass(frozen=True)
class _Allowed:
    """What a tick's overrides and tier rules allow, worked out once per tick."""

    forwardable: frozenset[int]
    forbidden: frozenset[tuple[str, str]]
    drained: frozenset[str]
    pins: dict[str, dict[ShareKey, float]]  # source -> (tier, destination) -> pinned share

    @classmethod
    def of(cls, state: EngineState) -> _Allowed:
        pins: dict[str, dict[ShareKey, float]] = {}
        for (tier, src, dst), x in state.overrides.pinned.items():
            pins.setdefault(src, {})[(tier, dst)] = x
        return cls(
            frozenset(t.id for t in state.network.tiers if t.forwardable),
            state.overrides.forbidden,
            frozenset(state.overrides.drain),
            pins,
        )


def _forced(
    allowed: _Allowed, src: str, current: Mapping[ShareKey, float], dead: set[str]
) -> Shares:
    """Shares that change now, undamped: the operator's pins, and zero for what is not allowed
    (a forbidden pair, a tier that may not move, a drained or dead destination)."""
    forced: Shares = {
        (tier, dst): 0.0
        for tier, dst in current
        if tier not in allowed.forwardable
        or (src, dst) in allowed.forbidden
        or dst in allowed.drained
        or dst in dead
    }
    for (tier, dst), x in allowed.pins.get(src, {}).items():
        if dst not in dead:
            forced[(tier, dst)] = x
    return forced


def _expected_loads(demand: Demand, policies: Mapping[str, Shares]) -> dict[str, float]:
    load = dict(demand.loads)
    for src, shares in policies.items():
        for (tier, dst), x in shares.items():
            cores = x * demand.movable.get(src, {}).get(tier, 0.0)
            if src in load:
                load[src] -= cores
            if dst in load:
                load[dst] += cores
    return load


def _tick(state: EngineState, now: float) -> list[PolicyEvent]:
    pause = state.silence.pause(now)
    for held in state.policies.values():
        if held.expires_at is not None:  # as every writer does: nothing could be renewed
            held.expires_at = state.silence.after(held.expires_at + pause, state.config.lease)
    dead = _dead(state)
    allowed = _Allowed.of(state)
    fresh = [
        n
        for n in state.network.pop_names
        if n not in dead and state.pops[n].fresh(now, state.config.status_max_age_s)
    ]
    fresh_set = set(fresh)
    demand = Demand({}, {}, {})
    solution: Solution | None = None
    shedders: set[str] = set()
    if fresh:
        shedders = _shedders(state, fresh)
        native, rows = _estimate(state, fresh, now)
        state.native.update(native)
        demand = _demand(state, native, rows)
        if (
            shedders
            or allowed.pins
            or allowed.drained
            or any(p.shares for p in state.policies.values())
        ):
            solution = _solve(state, fresh, demand, shedders)
        else:  # nobody sheds, nothing is pinned, drained or in force: nothing to solve
            solution = Solution({}, {}, {}, 0.0, 0.0, [], False, "idle")

    keep = _still_good(state, demand, fresh_set, solution) if solution is not None else set()
    flagged = {  # _flagged, inline: every fresh PoP every tick
        name
        for name in fresh_set
        if (st := state.pops[name].status) is not None and st.state is PopState.SHED
    }
    # Relays of a flagged PoP's relief are part of it: their onward shares grow with the
    # shares they receive, at once, and none goes down while it lasts (a relay held by its own
    # hold-off while its inflow grows is flagged in turn a few seconds later: the lab's tail).
    relaying = {
        dst
        for src in flagged
        for (_, dst), x in _current(state, src).items()
        if x > 0.0 and dst != src
    }
    by_source: dict[str, Shares] = {}  # Solution.source_shares for every source, in one pass
    for tier, pairs in solution.shares.items() if solution is not None else ():
        for (s, dst), x in pairs.items():
            by_source.setdefault(s, {})[(tier, dst)] = x
    decided: dict[str, Shares] = {}
    targets: dict[str, Shares] = {}
    for src in state.network.pop_names:
        policy = state.policies.get(src)
        current = policy.shares if policy else {}
        if policy is not None and current and _lapsed(state, policy, now):
            current = {}  # its writer has dropped it to local by now: start again from there
        if solution is None:  # analytics is silent: keep policies as they are (fail static)...
            target = dict(current)
        elif src in fresh_set:
            target = dict(by_source.get(src, {}))
        else:  # no recent verdict for src: keep its policy, minus stale destinations
            target = {k: v for k, v in current.items() if k[1] in fresh_set}
        if src in keep and src not in relaying:
            target = dict(current)  # it still does its job: a better one is not worth the churn
        targets[src] = target
        if not current and not target and src not in allowed.pins:
            decided[src] = {}  # most PoPs, most of the time: nothing to damp
            continue
        decided[src] = damp(
            current,
            target,
            last_change=policy.last_change if policy else None,
            now=now,
            config=state.config.damping,
            forced=_forced(allowed, src, current, dead),  # ...but a dead destination goes at once
            urgent=_flagged(state, src) or src in relaying,
            flagged=flagged,
        )

    if solution is not None:
        unchanged = {  # most PoPs have no shares before or after: the same without comparing
            src
            for src, new in decided.items()
            if (not new and not _current(state, src)) or _same(_current(state, src), new)
        }
        _integrate(state, fresh, shedders, unchanged, set(by_source), now)
    expected = _expected_loads(demand, {s: d for s, d in decided.items()})
    events: list[PolicyEvent] = []
    lease = state.config.lease
    for src, new in decided.items():
        policy = state.policies.get(src)
        current = policy.shares if policy else {}
        if not current and not new:
            continue  # most PoPs, most of the time: no shares before or after, nothing to say
        lapsed = policy is not None and bool(current) and _lapsed(state, policy, now)
        if lapsed:
            # Not renewed in time (src's inputs went stale): its writer has dropped it to local.
            # Say so on the topic: a cancel, or a new policy starting from local again.
            action = PolicyAction.NEW if new else PolicyAction.CANCEL
            reason = (
                _reason(state, src, {}, new, targets[src], solution, expected, dead)
                if new
                else PolicyReason(
                    trigger_pop=src,
                    rule=f"{LAPSED}: no pop-status from {src} within"
                    f" {state.config.status_max_age_s:g} s, the lease ran out: back to local",
                )
            )
            changed_at = now
        elif not _same(current, new):
            action = (
                PolicyAction.CANCEL
                if not new
                else PolicyAction.NEW
                if not current
                else PolicyAction.UPDATE
            )
            reason = _reason(state, src, current, new, targets[src], solution, expected, dead)
            changed_at = now
        elif _renew(policy, src in fresh_set, lease, now):
            assert policy is not None  # a renewal: the same shares, a new version and lease
            action = PolicyAction.UPDATE
            reason = _renewal_reason(policy.reason, src)
            changed_at = policy.last_change
        else:
            continue
        state.version += 1
        expires_at = now + lease
        if (
            src not in fresh_set
            and policy is not None
            and policy.expires_at is not None
            and policy.expires_at > now
        ):
            expires_at = policy.expires_at  # a stale source's lease is never extended
        event = PolicyEvent(
            action=action,
            source=src,
            version=state.version,
            epoch=state.epoch,
            issued_at=now,
            expires_at=expires_at,
            shares=[
                Share(tier=t, destination=d, share=min(1.0, x)) for (t, d), x in sorted(new.items())
            ],
            reason=reason,
        )
        adopted = Policy(dict(new), state.version, now, expires_at, changed_at, reason, state.epoch)
        state.adopt(src, adopted, state.config.status_max_age_s)
        events.append(event)
    return events


def _flagged(state: EngineState, name: str) -> bool:
    status = state.pops[name].status
    return status is not None and status.state is PopState.SHED


def _still_good(
    state: EngineState, demand: Demand, fresh: set[str], solution: Solution
) -> set[str]:
    """Sources whose policy in force still does its job, by the current estimates; such a
    policy is kept as it is even if the solver found a slightly better one: what costs (table
    churn, connections moved, oscillation) is changing, not being a little off the optimum.

    Kept: the source not over its target (nor flagged), nor shedding far more than it needs
    (``keep_margin`` above, ``give_back_margin`` below), and every one of its destinations
    fresh and expected within ``receiver_margin`` of its target (at or under it, if analytics
    flags it). Also kept: an unflagged source, not shedding far more than it needs, whose new
    answer only moves the same amount between other destinations (the same tiers, each tier's
    total within the dead-band) while none of its destinations is too full: the LP has many
    equally good answers (receivers filled by other shedders in another order), and swapping
    between them is churn for nothing."""
    cfg = state.config.damping
    policies = {src: policy.shares for src, policy in state.policies.items() if policy.shares}
    expected = _expected_loads(demand, policies)

    def utilisation(name: str) -> float:
        status = state.pops[name].status
        cap = status.capacity_cores if status is not None else 0.0
        return expected[name] / cap if cap > 0.0 else float("inf")

    def over(name: str) -> float:
        return utilisation(name) - state.network.pop(name).target_utilisation

    good: set[str] = set()
    for src, shares in policies.items():
        if src not in fresh or src not in expected:
            continue
        dsts = {dst for _, dst in shares}
        if any(dst not in fresh or dst not in expected for dst in dsts):
            continue
        if any(over(dst) > cfg.receiver_margin for dst in dsts):
            continue
        u = over(src)
        # Shedding far more than it needs, by the estimate *and* by what is measured: the
        # estimate swings by a fifth tick to tick (the lab), and a give-back on a low swing of
        # a PoP measured at its target brought its flag (and its relays' give-back) back.
        status = state.pops[src].status
        measured = status.utilisation - state.network.pop(src).target_utilisation if status else u
        over_shedding = max(u, measured) < -cfg.give_back_margin
        flagged = _flagged(state, src)
        does_its_job = (
            not over_shedding
            and u <= cfg.keep_margin
            and not (flagged and (u > 0.0 or state.pops[src].boost > 0.0))
            and not any(over(dst) > 0.0 and _flagged(state, dst) for dst in dsts)
        )
        wanted = solution.source_shares(src)
        only_swaps = (
            not flagged
            and not over_shedding
            and {t for t, _ in wanted} == {t for t, _ in shares}  # no tier given up
            and _same_totals(shares, wanted, cfg.deadband)
        )
        if does_its_job or only_swaps:
            good.add(src)
    return good


def _same_totals(a: Shares, b: Shares, tolerance: float) -> bool:
    """Each tier moves the same share in total, within ``tolerance``."""
    tiers = {t for t, _ in a} | {t for t, _ in b}
    return all(
        abs(
            sum(x for (t, _), x in a.items() if t == tier)
            - sum(x for (t, _), x in b.items() if t == tier)
        )
        < tolerance
        for tier in tiers
    )


def _current(state: EngineState, src: str) -> Shares:
    policy = state.policies.get(src)
    return policy.shares if policy is not None else {}


def _lapsed(state: EngineState, policy: Policy, now: float) -> bool:
    return policy.expires_at is not None and state.silence.expired(policy.expires_at, now)


def _renew(policy: Policy | None, fresh: bool, lease: float, now: float) -> bool:
    """Renew a policy with shares once a third of its lease has passed, while its source's inputs
    are fresh; a source without a recent pop-status is left to lapse (its PoP goes local)."""
    if policy is None or not policy.shares or not fresh:
        return False
    if policy.expires_at is None:
        return True
    return now >= policy.expires_at - lease * 2.0 / 3.0


def _renewal_reason(reason: PolicyReason | None, src: str) -> PolicyReason:
    if reason is None:
        return PolicyReason(trigger_pop=src, rule="renewed: the policy in force")
    rule = reason.rule if reason.rule.startswith("renewed: ") else f"renewed: {reason.rule}"
    if len(rule) > MAX_REASON_CHARS:
        rule = rule[: MAX_REASON_CHARS - 3] + "..."
    return reason.model_copy(update={"rule": rule})


def _same(a: Mapping[ShareKey, float], b: Mapping[ShareKey, float]) -> bool:
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) <= SAME for k in set(a) | set(b))


def _reason(
    state: EngineState,
    src: str,
    current: Mapping[ShareKey, float],
    new: Mapping[ShareKey, float],
    target: Mapping[ShareKey, float],
    solution: Solution | None,
    expected: Mapping[str, float],
    dead: set[str],
) -> PolicyReason:
    """Name the PoP and rule behind a policy, what changed, and the loads expected after."""
    status = state.pops[src].status
    target_u = state.network.pop(src).target_utilisation
    pinned = {(t, d) for t, s, d in state.overrides.pinned if s == src}
    shares_by_tier = solution.shares.values() if solution is not None else []
    shedders_in = sorted(s for pairs in shares_by_tier for (s, d) in pairs if d == src and s != src)
    # The solver leaves src over target: its receivers (within the bounds) are full, and the
    # answer moves only what they can take, perhaps nothing (never "recovered").
    overloaded = set(solution.overloaded) if solution is not None else set()
    partial = src in overloaded
    cut = sorted({d for _, d in current if d in dead})
    util = f"{status.utilisation:.2f}" if status is not None else "unknown"
    rule_of = f" ({status.rule or status.state.value})" if status is not None else ""
    cap = status.capacity_cores if status is not None else 0.0
    expect = f", {expected[src] / cap:.2f} expected after" if src in expected and cap > 0 else ""
    trigger = src
    if cut:
        why = f"dead: {', '.join(cut)} without healthy capacity, cut at once"
    elif src in state.overrides.drain:
        why = f"override: {src} drained"
    elif pinned & set(new):
        why = f"override: pinned {', '.join(f't{t}->{d}' for t, d in sorted(pinned))}"
    elif new and partial:
        why = f"partial: receivers full, {src} at {util} > target {target_u:.2f}{rule_of}{expect}"
    elif status is not None and new and status.utilisation > target_u:
        why = f"shed: {src} at {util} > target {target_u:.2f}{rule_of}"
    elif new and shedders_in:
        trigger = shedders_in[0]
        why = f"cascade (48): {src} takes {trigger}'s traffic and passes its own on"
    elif new:
        why = f"rebalance: {src} native load over target {target_u:.2f}"
    elif partial:
        why = (
            f"partial: receivers full, nothing can move: {src} at {util}"
            f" > target {target_u:.2f}{rule_of}"
        )
    else:
        why = f"recovered: {src} at {util}, no forwarding needed"
    changes = []
    for key in sorted(set(current) | set(new)):
        before, after = current.get(key, 0.0), new.get(key, 0.0)
        if abs(before - after) > SAME:
            damped = "" if abs(after - target.get(key, 0.0)) <= SAME else " damped"
            changes.append(f"t{key[0]}->{key[1]} {before:.3f}->{after:.3f}{damped}")
    rule = f"{why}; {'; '.join(changes)}"
    if len(rule) > MAX_REASON_CHARS:
        rule = rule[: MAX_REASON_CHARS - 3] + "..."
    involved = {src, trigger} | {d for _, d in new} | {d for _, d in current}
    utilisation = {}
    for name in sorted(involved):
        model = state.pops.get(name)
        if name in expected and model is not None and model.status is not None:
            cap = model.status.capacity_cores
            utilisation[name] = min(100.0, max(0.0, expected[name] / cap)) if cap > 0 else 100.0
    return PolicyReason(
        trigger_pop=trigger,
        rule=rule,
        expected_utilisation=utilisation,
        infeasible=bool(overloaded & involved),
    )
