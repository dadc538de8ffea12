"""The overload scenario: the story told on a `lab.harness.Harness`, recorded in its Result.

Traffic runs in every region; the cost of a request rises everywhere (load starts), which
overloads PoP a (its region sends the most) and brings b close to its target; analytics flags
a; the engine moves a share of a's new connections to b, and because c is too far from a for
the bulk tier (45 ms > 30 ms) but b is full, b passes part of its own traffic to c (cascade);
long connections are opened in region a while a forwards (some live in b); the cost drops
(load stops); the policies are cancelled and the buckets drain; then a pinned share checks the
data plane's precision. The timings are lab.settings.timings(); SCENARIOS.md explains them.
"""

from __future__ import annotations

from lab.checks import (
    TOLERANCE,
    Window,
    engine_windows,
    min_samples,
    overload_gone,
    pin_windows,
)
from lab.harness import Harness
from lab.record import Result
from lab.settings import DRAIN_PERIOD_S, TABLE_BITS, TIER

TARGET_N = 3000  # connections per share check: sd <= 0.9 points, so 3 points is > 3 sd


def expected_n(windows: list[Window], rate: float, more_s: float = 0.0) -> tuple[float, int]:
    """(connections the windows will hold at `rate`, if the last one lasts `more_s` longer;
    connections the check needs at their share)."""
    span = sum(w.t1 - w.t0 for w in windows) + (more_s if windows else 0.0)
    share = sum(w.share * (w.t1 - w.t0) for w in windows) / max(1e-9, span - more_s)
    need = max(TARGET_N, int(1.2 * min_samples(share, TOLERANCE)))
    return span * rate, need


def overload(
    h: Harness, pin: bool = True, overload_s: float = 40.0, max_overload_s: float = 120.0
) -> Result:
    """Tell the story (module docstring) on a harness that is open; returns its Result.

    The load stays on for at least `overload_s`, and longer (up to `max_overload_s`) until the
    stretches where the engine's share held still are long enough for TARGET_N connections
    from region a; the pin holds until its window has TARGET_N (extra short requests from
    region a while pinned: the load is off then, so they change nothing but the sample).
    """
    plan, log = h.plan, h.log
    rate_a = plan.rates["a"]
    for pop in h.topo.pops:
        rate, longs = plan.rates.get(pop.name, 0.0), plan.longs.get(pop.name, 0)
        h.start_traffic(f"region-{pop.name}", pop.name, rate, longs, "main")
    log(f"traffic: {dict(plan.rates)} short/s, {dict(plan.longs)} long-lived; baseline")
    h.wait("a's table read", lambda: any(x.pop == "a" for x in h.result.tables), 30.0)
    h.sleep(6.0)
    h.counters("load_on")
    on = h.mark("load_on")
    h.set_load(True)
    log(f"t={on:.0f}s load starts: {plan.cost_ms} ms CPU per packet")
    h.wait("a's policy", lambda: bool(h.forwarding("a")), 90.0)
    h.wait("a's maps", lambda: h.maps_away("a") > 0, 30.0)
    log(f"t={h.t():.0f}s a forwards: {h.forwarding('a')}")

    # The late long connections open 6 s before the load stops, once a sends a fair share
    # away (some then live in b), and close 6 s after the cancel: they live less than the drain
    # period after any decrease of a's share, so the drain must keep every one of them (they
    # close 4 s after the cancel, and at the latest 4 s before the drain period ran out).
    late_s = 6.0

    def late_time() -> bool:
        if h.t() >= on + max_overload_s - late_s:
            return True
        if h.t() < on + overload_s - late_s or h.maps_away("a") < 0.15 * (1 << TABLE_BITS):
            return False
        n, need = expected_n(engine_windows(h.result, h.t()), rate_a, late_s)
        return n >= need

    h.wait("enough connections at a steady engine share", late_time, max_overload_s + 30.0)
    h.wait("a's maps at 15 %", lambda: h.maps_away("a") >= 0.15 * (1 << TABLE_BITS), 30.0)
    h.start_traffic("late-a", "a", 0.0, plan.late_longs, "late")
    h.mark("late_longs_on")
    h.sleep(late_s)
    off = h.mark("load_off")
    h.set_load(False)
    n, need = expected_n(engine_windows(h.result, off), rate_a)
    log(f"t={off:.0f}s load stops (about {n:.0f} connections at steady shares, {need} needed); "
        f"policies now: a {h.forwarding('a')}, b {h.forwarding('b')}")  # fmt: skip

    def cancelled() -> bool:
        return not any(h.forwarding(p.name) for p in h.topo.pops)

    gone = overload_gone(h.result, on, off)
    if gone is not None:
        h.result.marks["overload_gone"] = gone
    log(f"overload gone: {f'{gone - on:.1f} s after the load started' if gone else 'never'}")
    h.wait("every policy cancelled", cancelled, 120.0)
    cancel = max((p.t for p in h.result.policies if not p.shares and p.t >= off), default=h.t())
    h.result.marks["cancel"] = cancel
    h.wait("a's maps local", lambda: h.maps_away("a") == 0, 30.0)
    h.mark("a_local")
    log(f"t={cancel:.0f}s cancelled; long connections in b keep their second chance")
    late_on = h.result.marks["late_longs_on"]
    h.sleep(max(0.0, max(cancel + 1.0, min(cancel + 4.0, late_on + DRAIN_PERIOD_S - 4.0)) - h.t()))
    h.stop_traffic("late-a")
    h.mark("late_longs_off")
    drained = lambda: all(h.maps_draining(p.name) == 0 for p in h.topo.pops)  # noqa: E731
    h.wait("the drain", drained, 90.0)
    h.mark("drained")
    log(f"t={h.t():.0f}s drained: every secondary cleared")
    if pin:
        pin_rate = plan.pin_rate
        h.start_traffic("pin-a", "a", pin_rate, 0, "pin")
        why = ("--reason", "lab scenario: a pinned share", "--by", "lab")
        h.policy_cli("pin", "a", "b", "0.25", "--tier", str(TIER), *why)
        h.mark("pin_on")
        want = round(0.25 * (1 << TABLE_BITS))
        h.wait("the pinned share in a's maps", lambda: h.maps_away("a") == want, 30.0)
        h.mark("pin_steady")

        def pinned_enough() -> bool:
            n, need = expected_n(pin_windows(h.result, h.t()), rate_a + pin_rate)
            return n >= need

        h.wait("enough connections at the pinned share", pinned_enough, 120.0)
        h.policy_cli("clear", "a", *why)
        h.mark("pin_off")
        log(f"t={h.t():.0f}s pin cleared")
        h.stop_traffic("pin-a")
        h.sleep(1.0)
    for name in list(h.traffic):
        h.stop_traffic(name)
    h.counters("end")
    h.mark("end")
    return h.result


def infeasible(h: Harness, timeout_s: float = 60.0) -> Result:
    """A short variant on the same harness, after `overload`: the load on every server is
    `plan.infeasible_cost_ms` per packet, more than the lab can carry within the bulk tier's
    bound (a reaches only b, b only c, and c has little room left: SCENARIOS.md), so the engine
    must say its policy is the least bad (reason infeasible, "partial: receivers full ...")
    instead of promising relief. Short requests only; ends when it said so (or `timeout_s`)."""
    for pop in h.topo.pops:
        h.start_traffic(f"over-{pop.name}", pop.name, h.plan.rates.get(pop.name, 0.0), 0, "over")
    h.sleep(3.0)
    on = h.mark("infeasible_on")
    h.set_load(True, h.plan.infeasible_cost_ms)
    h.log(f"t={on:.0f}s load beyond capacity: {h.plan.infeasible_cost_ms} ms CPU per packet")

    def said() -> bool:
        return any(p.t >= on and p.infeasible for p in h.result.policies)

    h.wait("an infeasible policy", said, timeout_s)
    h.sleep(1.0)
    h.mark("infeasible_off")
    h.set_load(False)
    for name in [n for n in h.traffic if n.startswith("over-")]:
        h.stop_traffic(name)
    h.wait("every policy cancelled", lambda: not any(h.forwarding(p) for p in h.result.pops), 90.0)
    return h.result
