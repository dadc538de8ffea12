"""What every strategy sees and may do: one protocol, so the engine treats them all alike.

A strategy is called every ``interval_s`` of simulated time with an ``Observation`` and returns an
``Action``. Physics stays in the engine: BGP propagation delay, DNS TTL expiry and the lag of load
behind new connections apply to every strategy the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from sim.world import FloatArray, IntArray, World

BoolArray = npt.NDArray[np.bool_]
ShareKey = tuple[int, int, int]
"""(landing PoP, tier index, destination PoP)."""


@dataclass(frozen=True)
class Counters:
    """Cumulative since the start, as an agent's and a forwarder's monotonic counters would be.

    ``load`` integrates *measured* busy cores (capped at capacity: sim/measure.py), ``qos_ms``
    the probes' p95 latency. The traffic counters integrate the work of the connections in each
    place in core-seconds, uncapped: a forwarder counts packets as they arrive, whether or not
    the servers keep up (sim/strategies/popshift.py turns them into packets per PoP).
    """

    at: float
    load: FloatArray  # (pops,) integral of measured busy cores (core-seconds)
    qos_ms: FloatArray  # (pops,) integral of the probes' p95 latency (ms x s)
    local: FloatArray  # (pops, tiers) own connections processed here
    forwarded: FloatArray  # (pops, tiers) own connections processed elsewhere
    received: FloatArray  # (pops, tiers) other PoPs' connections processed here
    landed_new: FloatArray  # (pops, tiers) integral of new anycast connections landing here


@dataclass(frozen=True)
class Observation:
    now: float
    world: World
    load: FloatArray  # measured busy cores per PoP (capped at capacity), feedback_delay_s old
    capacity: FloatArray  # healthy cores per PoP now; 0 = dark
    alive: BoolArray
    catchment: IntArray  # region -> PoP its anycast traffic lands in now
    home: IntArray  # region -> nearest live PoP (the catchment without any withdrawal)
    withdrawn: frozenset[tuple[int, int]]  # (region, PoP) prefixes withdrawn or being withdrawn
    dns_target: IntArray  # region -> PoP a DNS answer sends it to, -1 none
    landed: FloatArray  # (pops, tiers) anycast connections alive per landing PoP
    region_active: FloatArray  # (regions, tiers) anycast connections per prefix (NetFlow view)
    counters: Counters
    true_rates: FloatArray  # (regions, tiers) new connections / s: only the oracle may look
    shares: dict[ShareKey, float]

    @property
    def utilisation(self) -> FloatArray:
        cap = self.capacity
        return np.divide(self.load, cap, out=np.zeros_like(self.load), where=cap > 0.0)


@dataclass
class Action:
    """``shares`` replaces all forwarding shares when not None; the rest are changes."""

    shares: dict[ShareKey, float] | None = None
    withdraw: list[tuple[int, int]] = field(default_factory=list)  # (region, PoP)
    announce: list[tuple[int, int]] = field(default_factory=list)
    dns: dict[int, int] = field(default_factory=dict)  # region -> PoP, -1 releases
    buckets_changed: int = 0
    policy_changes: int = 0


class Strategy(Protocol):
    name: str
    interval_s: float

    def step(self, obs: Observation, now: float) -> Action: ...


def nearest_with_room(
    world: World, src: int, room: FloatArray, max_ms: float, exclude: BoolArray | None = None
) -> int:
    """The nearest PoP to ``src`` within ``max_ms`` with positive ``room``; -1 if none."""
    lat = world.latency_ms[src]
    ok = (room > 0.0) & (lat <= max_ms)
    ok[src] = False
    if exclude is not None:
        ok &= ~exclude
    if not ok.any():
        return -1
    cand = np.flatnonzero(ok)
    return int(cand[np.argmin(lat[cand])])


def bucket_churn(old: dict[ShareKey, float], new: dict[ShareKey, float], bits: int) -> int:
    """Buckets a minimal table update changes: |round(new 2^N) - round(old 2^N)| per share."""
    size = 1 << bits
    return sum(
        abs(round(new.get(k, 0.0) * size) - round(old.get(k, 0.0) * size))
        for k in old.keys() | new.keys()
    )


def changed_sources(old: dict[ShareKey, float], new: dict[ShareKey, float]) -> int:
    """Policy events a change is: one per source PoP whose shares differ (new/update/cancel)."""
    return len({k[0] for k in old.keys() | new.keys() if old.get(k, 0.0) != new.get(k, 0.0)})
