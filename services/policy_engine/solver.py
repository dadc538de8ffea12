"""Inter-PoP forwarding shares: an exact min-cost flow (LP via HiGHS) and a fast greedy fallback.

Why a flow: every core of tier ``t``'s *native* demand at PoP ``i`` is processed somewhere — at
``i`` itself (free) or at a peer ``j`` within the tier's latency bound (cost). Each PoP processes
what it keeps plus what it receives; load beyond its target is allowed only through an overflow
variable with a penalty far above any latency cost. Because only native traffic is ever moved,
forwarded traffic is never forwarded again (patent (58)), yet PoP B may take A's traffic and at
the same time hand part of its *own* traffic to C: the cascade of (48), which lets A's overload
reach C when A->C alone is beyond the bound.

Objective, lexicographic by construction of the weights:
1. least overload (cores above target, summed over PoPs; beyond ``OVER_BAND`` of a PoP's
   target each core counts twice, so an excess no receiver can fully take is spread);
2. lower-priority tiers move first (each priority rank adds ``rank_penalty`` per core moved);
3. least added latency (cores x ms), plus a small per-hop cost so nothing moves without need.

Size: only PoPs that must shed, their candidate receivers and those receivers' own candidates
(cascade relays) get variables. A receiver is a PoP under target, or a shedder that can pass
its own traffic on to one (so a neighbour slightly over target still relays a far shedder's
overload); pairs beyond the tier's bound are pruned, and each sender keeps
its ``max_candidates`` nearest receivers. The LP is exact over that candidate graph; the greedy
uses the same graph, so its objective can never be lower.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog
from scipy.sparse import csc_matrix

try:  # HiGHS as scipy's linprog drives it (a private module: see _highs)
    from scipy.optimize._highspy import _core as _highs_core
except ImportError:  # pragma: no cover - another scipy layout: linprog it is
    _highs_core = None

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OVERLOAD_PENALTY = 1e6
"""Cost of one core above target: dwarfs any movement cost, so overload is minimised first."""
OVER_BAND = 0.10
"""Overload beyond this share of a PoP's target load costs twice as much: when not every PoP
can be brought to its target, the excess is spread (a at 0.85 and b at 0.80, both under the
shed threshold) rather than left whole at the shedder (a at 0.90, flagged, b at 0.75)."""
DRAIN_PENALTY = 1e5
"""Cost of one core a drained PoP could not hand off: below real overload, above movement."""
TOLERANCE = 1e-6


@dataclass(frozen=True)
class TierSpec:
    """A traffic tier's rule: may it move, how far, and in which order (lower priority first)."""

    id: int
    forwardable: bool = True
    max_added_latency_ms: float = 50.0
    priority: int = 0


@dataclass(frozen=True)
class PopSpec:
    """One PoP as the solver sees it; loads in cores.

    ``native`` maps tier id -> cores of that tier's traffic anycast lands here (before any
    forwarding); ``base_load`` is load not attributed to any tier (never movable). A drained PoP
    accepts nothing and tries to hand off every movable core.
    """

    name: str
    capacity: float
    target_utilisation: float
    native: Mapping[int, float]
    base_load: float = 0.0
    drained: bool = False

    @property
    def native_load(self) -> float:
        return self.base_load + sum(self.native.values())


@dataclass(frozen=True)
class Problem:
    """Everything the solver needs; ``latency_ms[i, j]`` is ``inf`` where no path is known.

    ``pinned`` fixes a share (tier, src, dst) -> fraction of src's native tier traffic (operator
    override; services/policy_engine/overrides.py refuses pins beyond the tier's latency bound,
    which every table writer would refuse); ``forbidden`` removes (src, dst) pairs for
    every tier.
    """

    pops: Sequence[PopSpec]
    tiers: Sequence[TierSpec]
    latency_ms: FloatArray
    pinned: Mapping[tuple[int, str, str], float] = field(default_factory=dict)
    forbidden: frozenset[tuple[str, str]] = frozenset()
    hop_cost_ms: float = 1.0
    max_candidates: int | None = 16

    def __post_init__(self) -> None:
        n = len(self.pops)
        if self.latency_ms.shape != (n, n):
            raise ValueError(f"latency_ms must be {n}x{n}, got {self.latency_ms.shape}")
        if len({p.name for p in self.pops}) != n:
            raise ValueError("pops: names must be unique")


@dataclass
class Solution:
    """Shares per tier per (src, dst), the loads they are expected to produce, and their cost."""

    shares: dict[int, dict[tuple[str, str], float]]
    utilisation: dict[str, float]
    load: dict[str, float]
    objective: float
    added_latency: float
    overloaded: list[str]
    infeasible: bool
    method: str

    def source_shares(self, src: str) -> dict[tuple[int, str], float]:
        """The shares one source PoP must apply: (tier, destination) -> fraction."""
        return {
            (tier, dst): x
            for tier, pairs in self.shares.items()
            for (s, dst), x in pairs.items()
            if s == src
        }


@dataclass(frozen=True)
class Graph:
    """The candidate arcs (tier, src, dst) of a problem, with bounds and costs per arc."""

    tier: IntArray  # index into problem.tiers
    src: IntArray
    dst: IntArray
    cost: FloatArray
    lower: FloatArray  # cores
    upper: FloatArray  # cores
    native: FloatArray  # (tiers, pops) cores
    native_load: FloatArray
    target_load: FloatArray
    penalty: FloatArray  # per PoP overflow penalty
    latency: FloatArray  # per arc ms

    @property
    def size(self) -> int:
        return int(self.src.size)


def _target_load(pop: PopSpec, tiers: Sequence[TierSpec]) -> float:
    if not pop.drained:
        return pop.capacity * pop.target_utilisation
    fixed = sum(pop.native.get(t.id, 0.0) for t in tiers if not t.forwardable)
    return min(pop.base_load + fixed, pop.capacity * pop.target_utilisation)


def _nearest(
    sub: FloatArray, rows: IntArray, bound: float, k: int | None
) -> tuple[IntArray, IntArray, FloatArray]:
    """Arcs from each of ``rows`` (``sub`` holds their latency rows, ``inf`` = not allowed) to
    its ``k`` nearest PoPs within ``bound`` ms, or to all of them when ``k`` is None."""
    n = sub.shape[1]
    if rows.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    sub[sub > bound] = np.inf
    if k is None or k >= n:
        cols = np.broadcast_to(np.arange(n), sub.shape)
    else:
        cols = np.argpartition(sub, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sub, cols, axis=1)
    keep = np.isfinite(vals)
    src = np.broadcast_to(rows[:, None], cols.shape)[keep]
    return src.astype(np.int64), cols[keep].astype(np.int64), vals[keep]


def build_graph(problem: Problem) -> Graph:
    """Prune to the arcs that can matter: shedders -> takers and takers -> takers (cascades)."""
    pops, tiers = problem.pops, problem.tiers
    n, nt = len(pops), len(tiers)
    index = {p.name: i for i, p in enumerate(pops)}
    native = np.array(
        [[p.native.get(t.id, 0.0) for p in pops] for t in tiers], dtype=np.float64
    ).reshape(nt, n)
    native_load = np.array([p.native_load for p in pops], dtype=np.float64)
    target = np.array([_target_load(p, tiers) for p in pops], dtype=np.float64)
    penalty = np.array(
        [DRAIN_PENALTY if p.drained else OVERLOAD_PENALTY for p in pops], dtype=np.float64
    )
    accepts = np.array([not p.drained for p in pops], dtype=bool)
    shedder = native_load > target + TOLERANCE
    has_room = accepts & ~shedder

    lat = np.asarray(problem.latency_ms, dtype=np.float64)
    blocked: list[tuple[int, int]] = [
        (index[s], index[d]) for s, d in problem.forbidden if s in index and d in index
    ]
    movable = [ti for ti, t in enumerate(tiers) if t.forwardable]
    k = problem.max_candidates

    def allowed(rows: IntArray, ti: int, to: npt.NDArray[np.bool_]) -> FloatArray:
        """Latency rows of ``rows`` (those with tier ``ti`` traffic), ``inf`` where not ``to``,
        to itself or forbidden."""
        sub = lat[rows]  # fancy indexing: a copy we may overwrite
        sub[:, ~to] = np.inf
        sub[np.arange(rows.size), rows] = np.inf
        for s, d in blocked:
            sub[rows == s, d] = np.inf
        return sub

    # A shedder can still take a neighbour's traffic if it passes as much of its own on to a
    # PoP with room: B slightly over target is the relay that lets A's overload reach C when
    # A->C is beyond the bound (48). Without it, A would move nothing at all.
    relay_ok = np.zeros(n, dtype=bool)
    shedders = np.flatnonzero(shedder & accepts)
    for ti in movable:
        rows = shedders[native[ti, shedders] > 0.0]
        if rows.size:
            sub = allowed(rows, ti, has_room)
            relay_ok[rows[(sub <= tiers[ti].max_added_latency_ms).any(axis=1)]] = True
    receiver_ok = has_room | relay_ok

    def arcs_from(rows: IntArray, ti: int) -> tuple[IntArray, IntArray, FloatArray]:
        rows = rows[native[ti, rows] > 0.0]
        sub = allowed(rows, ti, receiver_ok)
        return _nearest(sub, rows, tiers[ti].max_added_latency_ms, k)

    parts: list[tuple[int, IntArray, IntArray, FloatArray]] = []
    shedders = np.flatnonzero(shedder)
    relays: set[int] = set()
    for ti in movable:
        s_, d_, l_ = arcs_from(shedders, ti)
        parts.append((ti, s_, d_, l_))
        relays.update(int(x) for x in np.unique(d_) if not shedder[x])
    # A receiver may pass on its own traffic, any movable tier, to make room: the cascade of (48).
    # (A shedder that receives already has its own arcs out.)
    relay_rows = np.array(sorted(relays), dtype=np.int64)
    for ti in movable:
        s_, d_, l_ = arcs_from(relay_rows, ti)
        parts.append((ti, s_, d_, l_))

    empty = np.zeros(0, np.int64)
    t_arr = np.concatenate([np.full(p[1].size, p[0], np.int64) for p in parts] or [empty])
    s_arr = np.concatenate([p[1] for p in parts] or [empty])
    d_arr = np.concatenate([p[2] for p in parts] or [empty])
    lat_arr = np.concatenate([p[3] for p in parts] or [np.zeros(0)])

    # Operator pins: honoured whatever the bound, fixed at exactly the pinned share.
    tier_index = {t.id: ti for ti, t in enumerate(tiers)}
    pins: dict[tuple[int, int, int], float] = {}
    for (tier_id, s, d), share in problem.pinned.items():
        if tier_id in tier_index and s in index and d in index and s != d:
            pins[(tier_index[tier_id], index[s], index[d])] = share
    if pins:
        existing = set(zip(t_arr.tolist(), s_arr.tolist(), d_arr.tolist(), strict=True))
        extra = [key for key in pins if key not in existing]
        if extra:
            t_arr = np.concatenate([t_arr, np.array([e[0] for e in extra], np.int64)])
            s_arr = np.concatenate([s_arr, np.array([e[1] for e in extra], np.int64)])
            d_arr = np.concatenate([d_arr, np.array([e[2] for e in extra], np.int64)])
            known = np.array([lat[e[1], e[2]] for e in extra])
            lat_arr = np.concatenate([lat_arr, np.where(np.isfinite(known), known, 0.0)])

    ranks = sorted({tiers[ti].priority for ti in movable})
    rank_of = np.array(
        [ranks.index(t.priority) if t.forwardable else len(ranks) for t in tiers], np.float64
    )
    rank_penalty = 4.0 * (
        max((tiers[ti].max_added_latency_ms for ti in movable), default=0.0) + problem.hop_cost_ms
    )
    cost = lat_arr + problem.hop_cost_ms + rank_of[t_arr] * rank_penalty
    upper = native[t_arr, s_arr]
    lower = np.zeros(t_arr.size)
    if pins:
        keys = zip(t_arr.tolist(), s_arr.tolist(), d_arr.tolist(), strict=True)
        key_pos = {key: pos for pos, key in enumerate(keys)}
        for key, share in pins.items():
            pos = key_pos[key]
            lower[pos] = upper[pos] = share * native[key[0], key[1]]
    return Graph(
        tier=t_arr,
        src=s_arr,
        dst=d_arr,
        cost=cost,
        lower=lower,
        upper=upper,
        native=native,
        native_load=native_load,
        target_load=target,
        penalty=penalty,
        latency=lat_arr,
    )


def loads_after(graph: Graph, flow: FloatArray) -> FloatArray:
    """Each PoP's load once ``flow`` (cores per arc) is forwarded."""
    load = graph.native_load.copy()
    np.subtract.at(load, graph.src, flow)
    np.add.at(load, graph.dst, flow)
    return load


def overload_bands(graph: Graph) -> FloatArray:
    """Per PoP, the first ``OVER_BAND`` of its target above it, where overload costs its
    penalty; beyond, twice that (see the module docstring)."""
    return np.asarray(OVER_BAND * graph.target_load)


def objective(graph: Graph, flow: FloatArray) -> float:
    """The one objective both solvers are judged by (see the module docstring)."""
    over = np.maximum(loads_after(graph, flow) - graph.target_load, 0.0)
    band = overload_bands(graph)
    near, far = np.minimum(over, band), np.maximum(over - band, 0.0)
    return float(graph.cost @ flow + graph.penalty @ near + 2.0 * graph.penalty @ far)


def _cleaned(graph: Graph, flow: FloatArray) -> FloatArray:
    """A flow as a solution reports it: within its arcs' bounds, dust dropped."""
    flow = np.clip(flow, graph.lower, graph.upper)
    flow[flow < TOLERANCE] = 0.0
    return flow


def _solution(problem: Problem, graph: Graph, flow: FloatArray, method: str) -> Solution:
    flow = _cleaned(graph, flow)
    load = loads_after(graph, flow)
    names = [p.name for p in problem.pops]
    shares: dict[int, dict[tuple[str, str], float]] = {}
    for pos in np.flatnonzero(flow > 0.0):
        ti, i, j = int(graph.tier[pos]), int(graph.src[pos]), int(graph.dst[pos])
        total = graph.native[ti, i]
        x = min(1.0, float(flow[pos] / total)) if total > 0 else 0.0
        if x > 0.0:
            shares.setdefault(problem.tiers[ti].id, {})[(names[i], names[j])] = x
    # Rounding can push a tier's sum a hair above 1; scale it back.
    for pairs in shares.values():
        per_src: dict[str, float] = {}
        for (s, _), x in pairs.items():
            per_src[s] = per_src.get(s, 0.0) + x
        for key in list(pairs):
            total_s = per_src[key[0]]
            if total_s > 1.0:
                pairs[key] /= total_s
    caps = np.array([p.capacity for p in problem.pops], dtype=np.float64)
    util = np.divide(load, caps, out=np.where(load > 0, np.inf, 0.0), where=caps > 0)
    over = (load > graph.target_load + TOLERANCE * np.maximum(1.0, graph.target_load)) & (
        graph.penalty >= OVERLOAD_PENALTY
    )
    overloaded = [names[i] for i in np.flatnonzero(over)]
    return Solution(
        shares=shares,
        utilisation={names[i]: float(util[i]) for i in range(len(names))},
        load={names[i]: float(load[i]) for i in range(len(names))},
        objective=objective(graph, flow),
        added_latency=float(graph.latency @ flow),
        overloaded=overloaded,
        infeasible=bool(overloaded),
        method=method,
    )


class SolverFailed(Exception):
    """HiGHS gave no usable answer (iteration limit, numerical trouble); use the greedy."""


@dataclass(frozen=True)
class _LP:
    """The flow as ``min c x`` s.t. ``a_ub x <= b_ub``, ``lower <= x <= upper``: one column per
    arc then one overflow slack per PoP involved; rows: one supply limit per (tier, src) with
    arcs, then one load limit per PoP involved. ``a_ub`` in CSC form, row indices sorted in
    each column (the form scipy's linprog hands HiGHS)."""

    c: FloatArray
    indptr: IntArray
    indices: IntArray
    data: FloatArray
    b_ub: FloatArray
    lower: FloatArray
    upper: FloatArray

    @property
    def shape(self) -> tuple[int, int]:
        return self.b_ub.size, self.c.size


def _lp(graph: Graph) -> _LP:
    """Built column by column with numpy: each arc's column holds +1 in its supply row, +1 in its
    destination's load row and -1 in its source's; each slack's column -1 in its PoP's row."""
    m = graph.size
    n = graph.native_load.size
    supplies, supply_row = np.unique(graph.tier * n + graph.src, return_inverse=True)
    pops_used = np.unique(np.concatenate([graph.src, graph.dst]))
    pop_row = np.full(n, -1, dtype=np.int64)
    pop_row[pops_used] = np.arange(pops_used.size) + supplies.size
    n_used = pops_used.size
    n_slack = 2 * n_used  # per PoP: overload within its band, then beyond it (twice the cost)
    dst_row, src_row = pop_row[graph.dst], pop_row[graph.src]
    dst_first = dst_row < src_row  # a supply row always comes before both load rows
    arc_rows = np.column_stack(
        [supply_row, np.minimum(dst_row, src_row), np.maximum(dst_row, src_row)]
    )
    arc_vals = np.empty((m, 3))
    arc_vals[:, 0] = 1.0
    arc_vals[:, 1] = np.where(dst_first, 1.0, -1.0)
    arc_vals[:, 2] = -arc_vals[:, 1]
    return _LP(
        c=np.concatenate([graph.cost, graph.penalty[pops_used], 2.0 * graph.penalty[pops_used]]),
        indptr=np.concatenate([np.arange(m + 1) * 3, 3 * m + 1 + np.arange(n_slack)]),
        indices=np.concatenate([arc_rows.ravel(), pop_row[pops_used], pop_row[pops_used]]),
        data=np.concatenate([arc_vals.ravel(), -np.ones(n_slack)]),
        b_ub=np.concatenate(
            [
                graph.native.reshape(-1)[supplies],
                graph.target_load[pops_used] - graph.native_load[pops_used],
            ]
        ),
        lower=np.concatenate([graph.lower, np.zeros(n_slack)]),
        upper=np.concatenate(
            [graph.upper, overload_bands(graph)[pops_used], np.full(n_used, np.inf)]
        ),
    )


def _solve_lp(graph: Graph, max_iterations: int | None) -> FloatArray:
    if graph.size == 0:
        return np.zeros(0)
    lp = _lp(graph)
    x = _highs(lp, max_iterations) if _highs_core is not None else _linprog(lp, max_iterations)
    return np.asarray(x[: graph.size], dtype=np.float64)


def _linprog(lp: _LP, max_iterations: int | None) -> FloatArray:
    """scipy's public interface: the reference, and the way when its HiGHS module has moved."""
    options: dict[str, float | bool] = {"presolve": True}
    if max_iterations is not None:
        options["maxiter"] = max_iterations
    a_ub = csc_matrix((lp.data, lp.indices, lp.indptr), shape=lp.shape)
    bounds = np.column_stack([lp.lower, lp.upper])
    res = linprog(lp.c, A_ub=a_ub, b_ub=lp.b_ub, bounds=bounds, method="highs", options=options)
    if res.status != 0 or res.x is None:
        raise SolverFailed(f"HiGHS status {res.status}: {res.message}")
    return np.asarray(res.x, dtype=np.float64)


_CHECK_TOL = np.sqrt(1e-9) * 10
"""linprog's acceptance tolerance for an optimal answer (scipy's _check_result, tol 1e-9)."""


def _highs(lp: _LP, max_iterations: int | None) -> FloatArray:
    """The same HiGHS model, options and checks as ``linprog(method="highs")``, without its
    per-call overhead (input cleaning, option validation and a Python loop over every column
    for the bound marginals we never read): ~3 ms of each round's ~5 ms solve at 300 PoPs.
    tests/policy/test_solver_highs.py holds it to linprog's answers, bit for bit."""
    assert _highs_core is not None
    h = _highs_core
    n_rows, n_cols = lp.shape
    model = h.HighsLp()
    model.num_col_ = n_cols
    model.num_row_ = n_rows
    model.a_matrix_.num_col_ = n_cols
    model.a_matrix_.num_row_ = n_rows
    model.a_matrix_.format_ = h.MatrixFormat.kColwise
    model.a_matrix_.start_ = lp.indptr
    model.a_matrix_.index_ = lp.indices
    model.a_matrix_.value_ = lp.data
    model.col_cost_ = lp.c
    model.col_lower_ = np.clip(lp.lower, -h.kHighsInf, h.kHighsInf)
    model.col_upper_ = np.clip(lp.upper, -h.kHighsInf, h.kHighsInf)
    model.row_lower_ = np.full(n_rows, -h.kHighsInf)
    model.row_upper_ = np.clip(lp.b_ub, -h.kHighsInf, h.kHighsInf)
    options = h.HighsOptions()
    options.presolve = "on"
    options.output_flag = False
    options.log_to_console = False
    options.highs_debug_level = h.HighsDebugLevel.kHighsDebugLevelNone
    options.simplex_strategy = h.simplex_constants.SimplexStrategy.kSimplexStrategyDual
    if max_iterations is not None:
        options.simplex_iteration_limit = max_iterations
        options.ipm_iteration_limit = max_iterations
    highs = h._Highs()
    if (
        highs.passOptions(options) == h.HighsStatus.kError
        or highs.passModel(model) == h.HighsStatus.kError
        or highs.run() == h.HighsStatus.kError
    ):
        raise SolverFailed(f"HiGHS: {highs.modelStatusToString(highs.getModelStatus())}")
    status = highs.getModelStatus()
    if status != h.HighsModelStatus.kOptimal:
        raise SolverFailed(f"HiGHS: {highs.modelStatusToString(status)}")
    solution = highs.getSolution()
    x = np.array(solution.col_value)
    slack = lp.b_ub - np.array(solution.row_value)
    fun = highs.getInfo().objective_function_value
    tol = _CHECK_TOL
    if (
        np.isnan(x).any()
        or np.isnan(fun)
        or np.isnan(slack).any()
        or not np.all((x >= lp.lower - tol) & (x <= lp.upper + tol))
        or (slack < -tol).any()
    ):
        raise SolverFailed("HiGHS: the solution does not satisfy the constraints")
    return x


def solve(
    problem: Problem, max_iterations: int | None = None, graph: Graph | None = None
) -> Solution:
    """The exact optimum over the candidate graph (HiGHS dual simplex / IPM)."""
    graph = graph or build_graph(problem)
    return _solution(problem, graph, _solve_lp(graph, max_iterations), "exact")


def _greedy_flow(graph: Graph) -> FloatArray:
    """Shedders, worst first, fill their cheapest arcs' headroom; then one-relay cascades."""
    flow = graph.lower.copy()
    load = loads_after(graph, flow)
    sent = np.zeros_like(graph.native)
    np.add.at(sent, (graph.tier, graph.src), flow)
    order = np.lexsort((graph.cost, graph.src))  # by source, cheapest arc first
    starts = np.flatnonzero(np.diff(graph.src[order])) + 1
    by_src = {int(graph.src[g[0]]): g.tolist() for g in np.split(order, starts) if g.size}

    def room(pos: int) -> float:
        ti, i = graph.tier[pos], graph.src[pos]
        return float(min(graph.upper[pos] - flow[pos], graph.native[ti, i] - sent[ti, i]))

    def headroom(j: int) -> float:
        return float(graph.target_load[j] - load[j])

    def push(pos: int, amount: float) -> float:
        moved = min(amount, room(pos), headroom(int(graph.dst[pos])))
        if moved <= TOLERANCE:
            return 0.0
        ti, i, j = graph.tier[pos], graph.src[pos], graph.dst[pos]
        flow[pos] += moved
        sent[ti, i] += moved
        load[i] -= moved
        load[j] += moved
        return moved

    shedders = sorted(
        np.flatnonzero(load > graph.target_load + TOLERANCE).tolist(), key=lambda i: headroom(i)
    )
    for i in shedders:
        for pos in by_src.get(i, []):
            if -headroom(i) <= TOLERANCE:
                break
            push(pos, -headroom(i))
    for i in shedders:
        for pos in by_src.get(i, []):
            need = min(-headroom(i), room(pos))
            if -headroom(i) <= TOLERANCE:
                break
            if need <= TOLERANCE:
                continue
            relay = int(graph.dst[pos])
            # Make room at the relay by moving its own traffic on, then fill that room (48).
            for onward in by_src.get(relay, []):
                if headroom(relay) >= need - TOLERANCE:
                    break
                push(onward, need - headroom(relay))
            push(pos, need)
    return flow


def solve_greedy(problem: Problem, graph: Graph | None = None) -> Solution:
    """Fast, never optimal-guaranteed; same candidate graph and objective as :func:`solve`."""
    graph = graph or build_graph(problem)
    return _solution(problem, graph, _greedy_flow(graph), "greedy")


@dataclass(frozen=True)
class Budget:
    """The work one solve may do, counted in its size and simplex iterations, never in seconds:
    one input gives one answer, on a loaded machine as on an idle one, and a simulator run with
    one seed repeats exactly. The defaults keep about 1,000 PoPs exact in well under a second
    (bench/policy_scale.py: ~30,000 arcs, ~400 iterations, ~150 ms on 2 cores)."""

    max_exact_arcs: int = 50_000
    max_lp_iterations: int = 20_000


def solve_with_budget(problem: Problem, budget: Budget) -> Solution:
    """Greedy first (always an answer), then the exact LP if the candidate graph fits."""
    graph = build_graph(problem)
    flow = _greedy_flow(graph)  # its Solution only built if it is the answer: most rounds not
    if graph.size > budget.max_exact_arcs:
        return _solution(problem, graph, flow, "greedy")
    try:
        exact = solve(problem, max_iterations=budget.max_lp_iterations, graph=graph)
    except SolverFailed:
        return _solution(problem, graph, flow, "greedy")
    greedy = objective(graph, _cleaned(graph, flow))
    if exact.objective > greedy + TOLERANCE * max(1.0, abs(greedy)):
        # numerical trouble: an LP answer worse than the greedy is not worth having
        return _solution(problem, graph, flow, "greedy")
    return exact
