"""The metrics' own arithmetic: oscillations, latency percentiles, overload seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.metrics import LAT_BIN_MS, LAT_BINS, Metrics, Oscillations, percentile_from_hist


def test_rise_fall_rise_within_ten_minutes_is_one_oscillation() -> None:
    osc = Oscillations()
    osc.change("k", 0.0, 0.1, 0.0)
    osc.change("k", 0.1, 0.2, 30.0)  # still the same rise
    osc.change("k", 0.2, 0.1, 100.0)
    assert osc.count == 0
    osc.change("k", 0.1, 0.3, 500.0)
    assert osc.count == 1
    osc.change("other", 0.0, 0.1, 500.0)  # keys are independent
    assert osc.count == 1


def test_a_slow_rise_fall_rise_is_not_an_oscillation() -> None:
    osc = Oscillations()
    osc.change("k", 0.0, 0.1, 0.0)
    osc.change("k", 0.1, 0.0, 300.0)
    osc.change("k", 0.0, 0.1, 700.0)  # the first rise is more than 600 s ago
    assert osc.count == 0
    osc.change("k", 0.1, 0.1, 710.0)  # no change is no change
    osc.change("k", 0.1, 0.0, 720.0)
    osc.change("k", 0.0, 0.2, 730.0)
    assert osc.count == 1


def test_percentiles_from_the_histogram() -> None:
    hist = np.zeros(LAT_BINS)
    hist[int(10 / LAT_BIN_MS)] = 99.0  # 99 connections at 10 ms
    hist[int(40 / LAT_BIN_MS)] = 1.0  # one at 40 ms
    assert percentile_from_hist(hist, 50) == pytest.approx(10.0 + LAT_BIN_MS)
    assert percentile_from_hist(hist, 99) == pytest.approx(10.0 + LAT_BIN_MS)
    assert percentile_from_hist(hist, 99.5) == pytest.approx(40.0 + LAT_BIN_MS)
    assert math.isnan(percentile_from_hist(np.zeros(LAT_BINS), 50))


def test_overload_seconds_count_pops_times_ticks() -> None:
    m = Metrics(n_pops=3, n_tiers=1, overload_utilisation=1.0)
    m.tick(1.0, np.array([1.2, 0.5, 1.01]))
    m.tick(1.0, np.array([1.0, 0.5, 1.5]))  # exactly at capacity is not overload
    assert m.overload_pop_s == 3.0
    assert list(m.overload_per_pop) == [1.0, 0.0, 2.0]
    assert m.peak_utilisation == 1.5
    m.moved(np.array([0]), np.array([12.0]), np.array([5.0]))
    m.arrived(np.array([20.0]))
    assert m.moved_work / m.arrived_work == pytest.approx(0.25)
