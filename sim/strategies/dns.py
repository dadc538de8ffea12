"""DNS steering: answer the resolvers of an overloaded PoP's users with another PoP's address.

Granularity is the resolver (here: the regions of one country that share a nearest PoP), and a
change reaches users only as resolver caches expire (the engine spreads it over one TTL).
Established connections are not broken: the old address keeps working. The controller steers the
busiest resolvers first, each to the nearest PoP with headroom for all of it, then waits one TTL
for the effect.
"""

from __future__ import annotations

import numpy as np

from sim.scenario import ControllerSpec
from sim.strategies.base import Action, Observation, nearest_with_room
from sim.world import IntArray, World


def resolvers(world: World) -> IntArray:
    """Region -> resolver id: one resolver per (country, nearest PoP)."""
    keys = [f"{c}/{p}" for c, p in zip(world.region_country, world.region_rank[:, 0], strict=True)]
    ids = {k: i for i, k in enumerate(sorted(set(keys)))}
    return np.array([ids[k] for k in keys], dtype=np.int64)


class DnsStrategy:
    name = "dns"

    def __init__(self, world: World, ctl: ControllerSpec) -> None:
        self.interval_s = ctl.baseline_interval_s
        self.high, self.low, self.target = ctl.high, ctl.low, ctl.target_utilisation
        self.holdoff_s = ctl.dns_ttl_s
        self.resolver = resolvers(world)
        bounds = [t.max_added_latency_ms for t in world.tiers if t.forwardable]
        self.max_ms = max(bounds, default=0.0)
        self._steered: dict[int, list[int]] = {}  # PoP -> resolvers sent away from it
        self._last: dict[int, float] = {}

    def step(self, obs: Observation, now: float) -> Action:
        act = Action()
        util = obs.utilisation
        room = np.where(obs.alive, self.low * obs.capacity - obs.load, 0.0)
        per_region = obs.region_active.sum(axis=1)
        for p in np.flatnonzero(obs.alive):
            pop = int(p)
            if now - self._last.get(pop, -np.inf) < self.holdoff_s:
                continue
            steered = self._steered.setdefault(pop, [])
            if util[pop] > self.high:
                here = np.flatnonzero((obs.catchment == pop) & (obs.dns_target < 0))
                traffic = np.bincount(self.resolver[here], weights=per_region[here])
                landed = per_region[obs.catchment == pop].sum()
                need = (util[pop] - self.target) / util[pop] * landed
                for res in np.argsort(-traffic, kind="stable"):
                    if need <= 0.0 or traffic[res] <= 0.0:
                        break
                    # Only to a PoP that can take the whole resolver: it moves as one.
                    moved = traffic[res] / max(landed, 1e-12) * obs.load[pop]
                    target = nearest_with_room(obs.world, pop, room - moved, self.max_ms)
                    if target < 0:
                        continue
                    for r in here[self.resolver[here] == res]:
                        act.dns[int(r)] = target
                    steered.append(int(res))
                    room[target] -= moved
                    need -= traffic[res]
                    act.policy_changes += 1
                self._last[pop] = now
            elif util[pop] < self.low and steered:
                res = steered.pop()
                for r in np.flatnonzero(self.resolver == res):
                    act.dns[int(r)] = -1
                act.policy_changes += 1
                self._last[pop] = now
        return act
