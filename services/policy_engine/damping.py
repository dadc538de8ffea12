"""Damping between the solver's ideal shares and what is emitted.

Only new connections move, so a PoP's load follows a share change with a lag of roughly a
connection lifetime. Chasing the solver each round would overshoot and oscillate; instead:
- a dead-band: a change smaller than ``deadband`` is not worth the table churn (a share going to
  zero is always allowed, or a tiny share would never be cancelled);
- a cap on the change of each share per round (``max_step``);
- a hold-off: after a source's policy changed, it stays as it is for ``holdoff_s`` so the
  change can show in the load before the next one.
Safety changes (forbidden pair, drained destination, operator pin) bypass all three, and so
does relief for a PoP analytics flags (``urgent``): a share growing to take load off an
overloaded PoP is applied whole at once, and none of its shares goes down while it is flagged
(but those to a destination flagged in turn); the engine passes ``urgent`` for a relay of a
flagged PoP too (its onward shares follow its inflow);
a share going down waits and steps once the flag is gone (giving back is never urgent, and a
fast give-back is what makes a relieved PoP flap).

The engine also keeps a policy that still does its job (engine.py ``_still_good``): within
``keep_margin`` above and ``give_back_margin`` below the target for the source, and within
``receiver_margin`` above the target for each (unflagged) destination.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

ShareKey = tuple[int, str]  # (tier, destination)
Shares = dict[ShareKey, float]

EPSILON = 1e-9


@dataclass(frozen=True)
class DampingConfig:
    deadband: float = 0.05
    relief_deadband: float = 0.02
    """Relief is finer: a flagged PoP's share grows by as little as this."""
    max_step: float = 0.10
    holdoff_s: float = 15.0
    keep_margin: float = 0.10
    give_back_margin: float = 0.10
    receiver_margin: float = 0.08


def damp(
    current: Mapping[ShareKey, float],
    target: Mapping[ShareKey, float],
    *,
    last_change: float | None,
    now: float,
    config: DampingConfig,
    forced: Mapping[ShareKey, float] | None = None,
    urgent: bool = False,
    flagged: Collection[str] = (),
) -> Shares:
    """The shares to emit this round for one source PoP.

    ``forced`` holds shares that must take effect now, whatever the damping says; ``urgent``
    (the source is flagged) lets every growing share reach its target at once and holds the
    others, except those to a destination that is ``flagged`` itself (damped as usual).
    """
    forced = forced or {}
    held = last_change is not None and now - last_change < config.holdoff_s
    out: Shares = {}
    for key in set(current) | set(target) | set(forced):
        cur = current.get(key, 0.0)
        if key in forced:
            new = forced[key]
        elif urgent and target.get(key, 0.0) > cur + config.relief_deadband:
            new = target[key]
        elif urgent and target.get(key, 0.0) < cur and key[1] not in flagged:
            new = cur  # no share of a flagged PoP goes down: its load must not swing back up
        elif held:
            new = cur
        else:
            want = target.get(key, 0.0)
            delta = want - cur
            if abs(delta) < config.deadband and want > 0.0:
                new = cur
            else:
                new = cur + max(-config.max_step, min(config.max_step, delta))
        if new > EPSILON:
            out[key] = new
    return _fit_tiers(out, current, forced)


def _fit_tiers(
    shares: Shares, current: Mapping[ShareKey, float], forced: Mapping[ShareKey, float]
) -> Shares:
    """Keep each tier's total <= 1: capped decreases can leave increases without room, so scale
    the increases (never the forced shares) down to what fits."""
    tiers = {t for t, _ in shares}
    for tier in tiers:
        keys = [k for k in shares if k[0] == tier]
        total = sum(shares[k] for k in keys)
        if total <= 1.0 + EPSILON:
            continue
        growing = [k for k in keys if k not in forced and shares[k] > current.get(k, 0.0)]
        growth = sum(shares[k] - current.get(k, 0.0) for k in growing)
        excess = total - 1.0
        scale = max(0.0, 1.0 - excess / growth) if growth > 0.0 else 0.0
        for k in growing:
            base = current.get(k, 0.0)
            shares[k] = base + (shares[k] - base) * scale
        for k in keys:
            if shares[k] <= EPSILON:
                del shares[k]
    return shares
