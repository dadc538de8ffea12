"""The cohort model on its own: lifetimes, shares, breaks and failures keep the books balanced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.connections import Cohorts


def cohorts() -> Cohorts:
    return Cohorts(4, 3, np.array([60.0, 20.0]), np.array([0.01, 0.002]))


def balance(c: Cohorts) -> float:
    led = c.ledger
    return float(np.abs(led.arrived - led.done - led.broken - led.lost - c.active()).max())


RATES = np.array([[10.0, 50.0], [5.0, 20.0], [8.0, 8.0], [1.0, 1.0]])
CATCH = np.array([0, 0, 1, 2])


def test_steady_state_is_rate_times_lifetime() -> None:
    c = cohorts()
    for _ in range(2000):
        c.step(1.0, RATES, CATCH)
    tau = np.array([60.0, 20.0])
    # The fluid tick ages before it adds: n = r dt / (1 - e^(-dt/tau)) ~ r tau + r dt / 2.
    expected = RATES[:2].sum(axis=0) / (1.0 - np.exp(-1.0 / tau))
    assert c.local[0] == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(RATES[:2].sum(axis=0) * tau, rel=0.03)
    assert c.load()[0] == pytest.approx(expected @ np.array([0.01, 0.002]), rel=0.02)
    assert balance(c) < 1e-6


def test_shares_move_only_new_connections_and_drain_slowly() -> None:
    c = cohorts()
    c.warm_start(RATES, CATCH, 1.0)
    before = c.local[0].copy()
    c.set_shares({(0, 0, 1): 0.5})
    c.step(1.0, RATES, CATCH)
    # Established connections stayed; only half of one second's arrivals went to PoP 1.
    assert c.local[0, 0] == pytest.approx(before[0] * np.exp(-1 / 60) + 15 * 0.5)
    assert c.local[0, 1] == pytest.approx(before[1] * np.exp(-1 / 20) + 70)
    assert c.arc_n[0] == pytest.approx(15 * 0.5)
    c.set_shares({})
    c.step(1.0, RATES, CATCH)
    assert c.arc_n.size == 1 and c.arc_n[0] > 0.0  # draining: still living in PoP 1
    assert balance(c) < 1e-6


def test_dropping_a_region_takes_its_share_of_every_processing_pop() -> None:
    c = cohorts()
    c.set_shares({(0, 0, 1): 0.5, (0, 1, 2): 0.25})
    for _ in range(300):
        c.step(1.0, RATES, CATCH)
    landed0 = c.landed()[0].copy()
    removed = c.drop_regions(np.array([1]), CATCH, broken=True)
    assert removed == pytest.approx(float(RATES[1] @ np.array([60.0, 20.0])), rel=0.02)
    # Region 0 is what is left at PoP 0, in the same mix.
    assert c.landed()[0] == pytest.approx(landed0 - c.anyc[1] - (landed0 - c.anyc[0]), rel=1e-9)
    assert c.landed()[0] == pytest.approx(c.anyc[0], rel=1e-9)
    assert c.ledger.broken.sum() == pytest.approx(removed)
    assert balance(c) < 1e-6


def test_a_dark_pop_loses_what_landed_and_what_it_processed() -> None:
    c = cohorts()
    c.set_shares({(0, 0, 1): 0.5, (1, 0, 2): 0.5})
    for _ in range(300):
        c.step(1.0, RATES, CATCH)
    c.fail_pop(1, CATCH)
    assert c.local[1].sum() == 0.0
    assert c.received()[1].sum() == 0.0
    assert c.ledger.broken.sum() == 0.0 and c.ledger.lost.sum() > 0.0
    # Arrivals still forwarded to the dead PoP fail too, and the books stay balanced.
    c.step(1.0, RATES, np.array([0, 0, 0, 2]))
    assert balance(c) < 1e-6


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 2), st.floats(0.0, 0.5)),
        max_size=5,
    ),
    st.integers(0, 3),
    st.booleans(),
)
def test_books_balance_whatever_happens(shares, region, fail) -> None:
    c = cohorts()
    c.warm_start(RATES, CATCH, 1.0)
    c.set_shares({(a, b, d): x for a, b, d, x in shares if a != d})
    catch = CATCH.copy()
    for k in range(50):
        c.step(1.0, RATES, catch)
        if k == 20:
            c.drop_regions(np.array([region]), catch, broken=True)
            catch[region] = (catch[region] + 1) % 3
        if k == 30 and fail:
            c.fail_pop(2, catch)
            catch[catch == 2] = 0
    assert balance(c) < 1e-6 * max(1.0, float(c.ledger.arrived.sum()))
    # Every region's connections are exactly what its landing PoP holds for it.
    per_pop = np.zeros((3, 2))
    np.add.at(per_pop, catch, c.anyc)
    assert np.allclose(per_pop, c.landed(), rtol=1e-6, atol=1e-6)
