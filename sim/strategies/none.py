"""The do-nothing baseline: anycast alone decides where every connection is processed."""

from __future__ import annotations

from sim.strategies.base import Action, Observation


class NoneStrategy:
    name = "none"

    def __init__(self, interval_s: float = 3600.0) -> None:
        self.interval_s = interval_s

    def step(self, obs: Observation, now: float) -> Action:
        return Action()
