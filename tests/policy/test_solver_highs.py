"""The solver's direct HiGHS call gives linprog's answers bit for bit, and so does its LP build.

``solver._highs`` replaced ``scipy.optimize.linprog(method="highs")`` for speed (see its
docstring); the reference below is the code it replaced: the LP assembled as a COO matrix and
handed to linprog.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from services.policy_engine import solver
from services.policy_engine.solver import (
    Budget,
    Graph,
    PopSpec,
    Problem,
    SolverFailed,
    TierSpec,
    build_graph,
    solve_with_budget,
)
from tests.policy.test_solver import problems


def reference_lp(graph: Graph, max_iterations: int | None) -> np.ndarray:
    m = graph.size
    if m == 0:
        return np.zeros(0)
    n = graph.native_load.size
    supply_key = graph.tier * n + graph.src
    supplies, supply_row = np.unique(supply_key, return_inverse=True)
    pops_used = np.unique(np.concatenate([graph.src, graph.dst]))
    pop_row = np.full(n, -1, dtype=np.int64)
    pop_row[pops_used] = np.arange(pops_used.size) + supplies.size
    n_used = pops_used.size
    n_slack = 2 * n_used  # overload within the band, then beyond it at twice the cost
    arc_ids = np.arange(m)
    slack_rows = np.concatenate([pop_row[pops_used], pop_row[pops_used]])
    rows = np.concatenate([supply_row, pop_row[graph.dst], pop_row[graph.src], slack_rows])
    cols = np.concatenate([arc_ids, arc_ids, arc_ids, m + np.arange(n_slack)])
    vals = np.concatenate([np.ones(m), np.ones(m), -np.ones(m), -np.ones(n_slack)])
    a_ub = coo_matrix((vals, (rows, cols)), shape=(supplies.size + n_used, m + n_slack)).tocsr()
    b_ub = np.concatenate(
        [
            graph.native.reshape(-1)[supplies],
            graph.target_load[pops_used] - graph.native_load[pops_used],
        ]
    )
    penalty = graph.penalty[pops_used]
    c = np.concatenate([graph.cost, penalty, 2.0 * penalty])
    band = solver.OVER_BAND * graph.target_load[pops_used]
    bounds = np.column_stack(
        [
            np.concatenate([graph.lower, np.zeros(n_slack)]),
            np.concatenate([graph.upper, band, np.full(n_used, np.inf)]),
        ]
    )
    options: dict[str, float | bool] = {"presolve": True}
    if max_iterations is not None:
        options["maxiter"] = max_iterations
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs", options=options)
    if res.status != 0 or res.x is None:
        raise SolverFailed(res.message)
    return np.asarray(res.x[:m])


def world_problem(seed: int, n: int = 200) -> Problem:
    """A network of ``n`` PoPs on a 60x60 ms plane, a fifth of them over target."""
    rng = np.random.default_rng(seed)
    tiers = [
        TierSpec(0, True, 40.0, 0),
        TierSpec(1, True, 20.0, 1),
        TierSpec(2, False, 0.0, 2),
    ]
    xy = rng.uniform(0.0, 60.0, (n, 2))
    lat = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    pops = []
    for i in range(n):
        cap = float(rng.uniform(100.0, 1000.0))
        load = cap * float(rng.uniform(0.3, 1.1))
        mix = rng.dirichlet([5.0, 3.0, 1.0])
        pops.append(PopSpec(f"p{i}", cap, 0.75, {t: float(load * mix[t]) for t in range(3)}))
    pinned = {(0, "p0", "p1"): 0.05} if seed % 2 else {}
    return Problem(pops, tiers, lat, pinned=pinned, forbidden=frozenset({("p2", "p3")}))


def same_answer(graph: Graph, max_iterations: int | None) -> None:
    try:
        want = reference_lp(graph, max_iterations)
    except SolverFailed:
        with pytest.raises(SolverFailed):
            solver._solve_lp(graph, max_iterations)
        return
    got = solver._solve_lp(graph, max_iterations)
    assert got.dtype == want.dtype
    assert np.array_equal(got, want)


@pytest.mark.parametrize("seed", range(6))
def test_a_large_network_gets_linprogs_answer_bit_for_bit(seed: int) -> None:
    graph = build_graph(world_problem(seed))
    assert graph.size > 500, "the network should need many arcs"
    same_answer(graph, 20_000)
    same_answer(graph, None)


def test_an_iteration_limit_fails_as_linprog_fails() -> None:
    graph = build_graph(world_problem(1))
    with pytest.raises(SolverFailed):
        reference_lp(graph, 1)
    with pytest.raises(SolverFailed):
        solver._solve_lp(graph, 1)
    assert solve_with_budget(world_problem(1), Budget(max_lp_iterations=1)).method == "greedy"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_small_networks_get_linprogs_answer_bit_for_bit(problem: Problem) -> None:
    same_answer(build_graph(problem), 20_000)


@pytest.mark.parametrize("seed", range(2))
def test_without_scipys_highs_module_linprog_gives_the_same_solution(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = world_problem(seed)
    fast = solve_with_budget(problem, Budget())
    monkeypatch.setattr(solver, "_highs_core", None)
    slow = solve_with_budget(problem, Budget())
    assert fast.method == slow.method == "exact"
    assert (fast.shares, fast.load, fast.objective) == (slow.shares, slow.load, slow.objective)


@pytest.mark.parametrize("budget", [Budget(max_exact_arcs=0), Budget(max_lp_iterations=1)])
def test_a_greedy_answer_of_the_budgeted_solve_is_solve_greedys(budget: Budget) -> None:
    """solve_with_budget builds the greedy's Solution only when it returns it: the same one."""
    problem = world_problem(3)
    got, want = solve_with_budget(problem, budget), solver.solve_greedy(problem)
    assert got.method == "greedy"
    assert (got.shares, got.load, got.objective, got.overloaded) == (
        want.shares,
        want.load,
        want.objective,
        want.overloaded,
    )
