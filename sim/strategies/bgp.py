"""BGP withdrawal: an overloaded PoP stops announcing some of its prefixes.

What operators do without popshift. Granularity is the prefix (here: one client region), the
change reaches the Internet after a propagation delay (the engine applies 1-2 minutes), every
established connection of a withdrawn prefix breaks when its packets start landing elsewhere, and
the prefix goes to the next-nearest PoP whatever that PoP's load. The controller withdraws the
largest prefixes first until the expected excess is covered, then waits for the change to show.
"""

from __future__ import annotations

import numpy as np

from sim.scenario import ControllerSpec
from sim.strategies.base import Action, Observation


class BgpStrategy:
    name = "bgp"

    def __init__(self, ctl: ControllerSpec) -> None:
        self.interval_s = ctl.baseline_interval_s
        self.high, self.low, self.target = ctl.high, ctl.low, ctl.target_utilisation
        self.holdoff_s = ctl.bgp_delay_s[1] + 30.0
        self._last: dict[int, float] = {}

    def step(self, obs: Observation, now: float) -> Action:
        act = Action()
        util = obs.utilisation
        per_region = obs.region_active.sum(axis=1)
        mine: dict[int, list[int]] = {}
        for r, p in obs.withdrawn:
            mine.setdefault(p, []).append(r)
        for live in np.flatnonzero(obs.alive):
            pop = int(live)
            if now - self._last.get(pop, -np.inf) < self.holdoff_s:
                continue
            if util[pop] > self.high:
                regions = np.flatnonzero(obs.catchment == pop)
                regions = regions[np.argsort(-per_region[regions], kind="stable")]
                need = (util[pop] - self.target) / util[pop] * per_region[regions].sum()
                picked = regions[np.cumsum(per_region[regions]) - per_region[regions] < need]
                picked = [int(r) for r in picked if (int(r), pop) not in obs.withdrawn]
                if picked:
                    act.withdraw += [(r, pop) for r in picked]
                    act.policy_changes += 1
                    self._last[pop] = now
            elif util[pop] < self.low and mine.get(pop):
                smallest = min(mine[pop], key=lambda r: (per_region[r], r))
                act.announce.append((smallest, pop))
                act.policy_changes += 1
                self._last[pop] = now
        return act
