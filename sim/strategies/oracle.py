"""The oracle: popshift's exact program, solved every round on the true demand, applied at once.

It knows each PoP's true native demand the instant it changes (arrival rates x lifetime x cost:
the load those arrivals will make), true capacities, and its shares reach every forwarder with
no measurement window, hysteresis, damping or delay. Only physics limits it: shares move new
connections, so load still follows with the connections' lifetimes. It bounds what any
controller of new-connection shares can do; popshift is judged by how close it comes.
"""

from __future__ import annotations

import numpy as np

from services.policy_engine.solver import PopSpec, Problem, TierSpec, solve
from sim.connections import bincount2
from sim.scenario import ControllerSpec
from sim.strategies.base import Action, Observation, ShareKey, bucket_churn, changed_sources
from sim.world import World


class OracleStrategy:
    name = "oracle"

    def __init__(self, world: World, ctl: ControllerSpec) -> None:
        self.interval_s = ctl.oracle_interval_s
        self.target = ctl.target_utilisation
        self.bits = ctl.table_bits
        self.tier_ids = [t.id for t in world.tiers]
        self.tiers = [
            TierSpec(
                id=t.id,
                forwardable=t.forwardable,
                max_added_latency_ms=t.max_added_latency_ms,
                priority=t.priority,
            )
            for t in world.tiers
        ]
        self.steady = np.array([t.mean_lifetime_s * t.cores_per_connection for t in world.tiers])
        self.index = {n: i for i, n in enumerate(world.pop_names)}

    def step(self, obs: Observation, now: float) -> Action:
        w = obs.world
        native = bincount2(obs.catchment, w.n_pops, w.n_tiers, obs.true_rates) * self.steady
        pops = [
            PopSpec(
                name=name,
                capacity=float(obs.capacity[i]),
                target_utilisation=self.target,
                native={tid: float(native[i, k]) for k, tid in enumerate(self.tier_ids)},
                drained=not bool(obs.alive[i]),
            )
            for i, name in enumerate(w.pop_names)
        ]
        latency = np.where(obs.alive[None, :], w.latency_ms, np.inf)
        solution = solve(Problem(pops=pops, tiers=self.tiers, latency_ms=latency))
        tier_index = {tid: k for k, tid in enumerate(self.tier_ids)}
        shares: dict[ShareKey, float] = {
            (self.index[s], tier_index[tid], self.index[d]): x
            for tid, pairs in solution.shares.items()
            for (s, d), x in pairs.items()
        }
        old = obs.shares
        return Action(
            shares=shares,
            buckets_changed=bucket_churn(old, shares, self.bits),
            policy_changes=changed_sources(old, shares),
        )
