"""The rules an operator's pin must keep before it is written (policy_engine/overrides.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from popshift.network import load_network
from services.policy_engine.overrides import InvalidOverride, Overrides, Pin

REPO = Path(__file__).resolve().parents[2]
# Tiers: 0 bulk (30 ms), 1 standard (15 ms), 2 premium (not forwardable); a-b 10, b-c 12, a-c 45.
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")


def pin(src: str, dst: str, tier: int, share: float) -> Overrides:
    return Overrides(pins=[Pin(source=src, destination=dst, tier=tier, share=share)])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (pin("a", "b", 2, 0.1), "tier 2 (premium) may not be forwarded"),
        (pin("a", "c", 1, 0.1), "a->c is 45 ms, tier 1 (standard) allows 15 ms"),
        (pin("a", "c", 0, 0.1), "a->c is 45 ms, tier 0 (bulk) allows 30 ms"),
        (pin("a", "zzz", 0, 0.1), "unknown PoP(s): zzz"),
        (pin("a", "b", 9, 0.1), "unknown tier(s): [9]"),
    ],
)
def test_a_pin_that_breaks_its_tier_rules_is_refused(overrides: Overrides, says: str) -> None:
    with pytest.raises(InvalidOverride) as info:
        overrides.check(NETWORK)
    assert says in str(info.value)


def test_pins_within_the_rules_and_zero_pins_pass() -> None:
    pin("a", "b", 1, 0.3).check(NETWORK)  # 10 ms within standard's 15
    pin("c", "b", 0, 1.0).check(NETWORK)  # reverse direction of b->c: symmetric
    pin("a", "b", 2, 0.0).check(NETWORK)  # zero only forbids: fine on any tier
    pin("a", "c", 1, 0.0).check(NETWORK)


def test_an_unknown_latency_is_not_within_the_bound() -> None:
    sparse = NETWORK.model_copy(update={"latency_ms": {"a": {"b": 10.0}}})
    with pytest.raises(InvalidOverride, match="b->c has no known latency"):
        pin("b", "c", 0, 0.2).check(sparse)
