"""One module per strategy, all behind ``sim.strategies.base.Strategy``."""

from __future__ import annotations

from sim.scenario import Scenario
from sim.strategies.base import Strategy
from sim.world import World


def make_strategy(name: str, world: World, scenario: Scenario) -> Strategy:
    """A fresh strategy (they keep state) for one run."""
    ctl = scenario.controller
    if name == "none":
        from sim.strategies.none import NoneStrategy

        return NoneStrategy()
    if name == "bgp":
        from sim.strategies.bgp import BgpStrategy

        return BgpStrategy(ctl)
    if name == "dns":
        from sim.strategies.dns import DnsStrategy

        return DnsStrategy(world, ctl)
    if name == "threshold":
        from sim.strategies.threshold import ThresholdStrategy

        return ThresholdStrategy(world, ctl)
    if name == "oracle":
        from sim.strategies.oracle import OracleStrategy

        return OracleStrategy(world, ctl)
    if name == "popshift":
        from sim.strategies.popshift import PopshiftStrategy

        return PopshiftStrategy(world, scenario)
    raise ValueError(f"unknown strategy {name!r}")
