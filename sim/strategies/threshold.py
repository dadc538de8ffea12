"""The patent's simple threshold pairing: an overloaded PoP is paired with a lightly loaded one.

Above ``high`` a PoP is paired with the nearest PoP under ``low`` (within the tier's latency
bound) and forwards ``step`` more of each forwardable tier's new connections to it every round;
below ``low`` it forwards ``step`` less, and the pair ends at zero. No optimisation, no cascade,
and no look at the partner once paired: the baseline popshift's solver has to beat.
"""

from __future__ import annotations

import numpy as np

from sim.scenario import ControllerSpec
from sim.strategies.base import (
    Action,
    Observation,
    ShareKey,
    bucket_churn,
    changed_sources,
    nearest_with_room,
)
from sim.world import World


class ThresholdStrategy:
    name = "threshold"

    def __init__(self, world: World, ctl: ControllerSpec) -> None:
        self.interval_s = ctl.baseline_interval_s
        self.high, self.low, self.step_size = ctl.high, ctl.low, ctl.threshold_step
        self.bits = ctl.table_bits
        self.tiers = [i for i, t in enumerate(world.tiers) if t.forwardable]
        self.bound = min((world.tiers[i].max_added_latency_ms for i in self.tiers), default=0.0)
        self._pair: dict[int, int] = {}
        self._share: dict[int, float] = {}

    def step(self, obs: Observation, now: float) -> Action:
        util = obs.utilisation
        room = np.where(obs.alive & (util < self.low), 1.0, 0.0)
        for p in np.flatnonzero(obs.alive):
            pop = int(p)
            partner = self._pair.get(pop)
            if partner is not None and not obs.alive[partner]:
                partner = None
                self._share[pop] = 0.0
            if util[pop] > self.high:
                if partner is None:
                    partner = nearest_with_room(obs.world, pop, room, self.bound)
                    if partner < 0:
                        continue
                    room[partner] = 0.0
                self._pair[pop] = partner
                self._share[pop] = min(1.0, self._share.get(pop, 0.0) + self.step_size)
            elif util[pop] < self.low and partner is not None:
                self._share[pop] = max(0.0, self._share.get(pop, 0.0) - self.step_size)
            if partner is not None and self._share.get(pop, 0.0) <= 0.0:
                self._pair.pop(pop, None)
                self._share.pop(pop, None)
        shares: dict[ShareKey, float] = {
            (src, t, dst): self._share[src]
            for src, dst in self._pair.items()
            for t in self.tiers
            if self._share.get(src, 0.0) > 0.0
        }
        old = obs.shares
        return Action(
            shares=shares,
            buckets_changed=bucket_churn(old, shares, self.bits),
            policy_changes=changed_sources(old, shares),
        )
