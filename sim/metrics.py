"""What a run is judged by: overload, utilisation, broken connections, latency paid, churn.

Accumulated tick by tick with fixed-size arrays (a latency histogram, not a list of samples), so a
day of 300 PoPs costs the same memory as an hour.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.connections import FORWARDED, SERVED, Ledger
from sim.world import FloatArray, IntArray

LAT_BIN_MS = 0.5
LAT_BINS = 4000  # up to 2 s
OSCILLATION_WINDOW_S = 600.0


class Oscillations:
    """Counts a value that rises, falls and rises again within ten minutes, per key."""

    def __init__(self, window_s: float = OSCILLATION_WINDOW_S) -> None:
        self.window_s = window_s
        self.count = 0
        self._turns: dict[object, deque[tuple[float, int]]] = {}

    def change(self, key: object, old: float, new: float, now: float) -> None:
        if new == old:
            return
        sign = 1 if new > old else -1
        turns = self._turns.setdefault(key, deque())
        while turns and turns[0][0] < now - self.window_s:
            turns.popleft()
        if turns and turns[-1][1] == sign:
            return  # same direction as before: still the same rise (or fall)
        if sign > 0 and len(turns) >= 2 and turns[-1][1] < 0 and turns[-2][1] > 0:
            self.count += 1
            turns.clear()
        turns.append((now, sign))


def percentile_from_hist(hist: FloatArray, q: float) -> float:
    """The ``q`` percentile (0..100) of a latency histogram; nan when empty."""
    total = float(hist.sum())
    if total <= 0.0:
        return float("nan")
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, total * q / 100.0))
    return (min(i, hist.size - 1) + 1) * LAT_BIN_MS


def latency_bin(ms: FloatArray) -> IntArray:
    return np.minimum((np.maximum(ms, 0.0) / LAT_BIN_MS).astype(np.int64), LAT_BINS - 1)


@dataclass
class Metrics:
    n_pops: int
    n_tiers: int
    overload_utilisation: float
    overload_pop_s: float = 0.0
    peak_utilisation: float = 0.0
    moved_work: float = 0.0
    arrived_work: float = 0.0
    buckets_changed: int = 0
    policy_changes: int = 0

    work_per_connection: FloatArray | None = None  # core-seconds, per tier

    def __post_init__(self) -> None:
        if self.work_per_connection is None:
            self.work_per_connection = np.ones(self.n_tiers)
        self.lat_hist = np.zeros((self.n_tiers, LAT_BINS))
        self.sample_t: list[float] = []
        self.sample_u: list[FloatArray] = []
        self.overload_per_pop = np.zeros(self.n_pops)
        self.oscillations = Oscillations()

    def tick(self, dt: float, util: FloatArray) -> None:
        over = util > self.overload_utilisation
        if over.any():
            self.overload_pop_s += float(over.sum()) * dt
            self.overload_per_pop += over * dt
        peak = float(util.max())
        if peak > self.peak_utilisation:
            self.peak_utilisation = peak

    def sample(self, now: float, util: FloatArray) -> None:
        self.sample_t.append(now)
        self.sample_u.append(util.astype(np.float32))

    def arrived(self, per_tier: FloatArray) -> None:
        """New connections this tick, per tier (the denominator of the forwarded share)."""
        assert self.work_per_connection is not None
        self.arrived_work += float(per_tier @ self.work_per_connection)

    def moved(self, tier: IntArray, added_ms: FloatArray, count: FloatArray) -> None:
        """``count`` new connections of ``tier`` processed ``added_ms`` further than anycast.

        The forwarded share is by work (core-seconds: what the traffic costs), the latency
        percentiles by connection (what users feel).
        """
        if count.size == 0:
            return
        assert self.work_per_connection is not None
        self.moved_work += float(count @ self.work_per_connection[tier])
        flat = tier * LAT_BINS + latency_bin(added_ms)
        self.lat_hist += np.bincount(
            flat, weights=count, minlength=self.n_tiers * LAT_BINS
        ).reshape(self.n_tiers, LAT_BINS)

    def utilisation_samples(self) -> FloatArray:
        if not self.sample_u:
            return np.zeros((0, self.n_pops))
        return np.vstack(self.sample_u).astype(np.float64)

    def summary(self, ledger: Ledger, active: FloatArray, duration_s: float) -> dict[str, float]:
        samples = self.utilisation_samples()
        live = samples[samples > 0.0]
        arrived = float(ledger.arrived.sum())
        hours = duration_s / 3600.0
        out: dict[str, float] = {
            "overload_pop_s": self.overload_pop_s,
            "peak_util": self.peak_utilisation,
            "p99_util": float(np.percentile(live, 99)) if live.size else 0.0,
            "arrived": arrived,
            "served": float(ledger.arrived[SERVED]),
            "forwarded": float(ledger.arrived[FORWARDED]),
            "broken": float(ledger.broken.sum()),
            "lost_to_failure": float(ledger.lost.sum()),
            "done": float(ledger.done.sum()),
            "active_end": float(active.sum()),
            "forwarded_share": self.moved_work / self.arrived_work if self.arrived_work else 0.0,
            "table_churn_buckets": float(self.buckets_changed),
            "policy_changes_per_h": self.policy_changes / hours if hours > 0 else 0.0,
            "oscillations": float(self.oscillations.count),
        }
        both = self.lat_hist.sum(axis=0)
        out["added_ms_p50"] = percentile_from_hist(both, 50)
        out["added_ms_p99"] = percentile_from_hist(both, 99)
        for t in range(self.n_tiers):
            out[f"added_ms_p99_tier{t}"] = percentile_from_hist(self.lat_hist[t], 99)
        return out
