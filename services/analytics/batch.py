"""services/analytics/rules.py's ``step`` for many PoPs of identical servers at once.

Why: the simulator judges every one of its hundreds of PoPs every round, and each of its PoPs is
``n`` identical servers at the PoP's utilisation. ``rules.step`` per PoP costs tens of
microseconds of Python (the metrics, the rules, the hysteresis, the message); here the rules and
the hysteresis are numpy over all PoPs, and only the reasons and messages due are built one by
one. tests/analytics/test_batch.py holds it equal to ``rules.step`` on random inputs; the
analytics service keeps ``rules.step``, whose PoPs' servers differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from schemas.messages import MAX_REASON_CHARS, PopState, PopStatusRow
from services.analytics.config import Band, CanTakeRules, CountBand, PopRules, ShedRules
from services.analytics.rules import NO_CAPACITY, Hysteresis, Metrics, ServerMetric, _fmt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

STATES = (PopState.NEUTRAL, PopState.CAN_TAKE, PopState.SHED)
"""A state's code is its index here."""
NEUTRAL, CAN_TAKE, SHED = range(3)


@dataclass(frozen=True)
class Uniform:
    """PoPs over the window, each of ``servers`` identical servers (one row per PoP): a server's
    utilisation is the PoP's (0 without capacity), its capacity the PoP's / ``servers``."""

    pops: list[str]
    capacity: FloatArray
    load: FloatArray
    servers: IntArray  # healthy servers; 0 for none
    qos_p95_ms: FloatArray | None = None  # NaN: no measurement

    def metrics(self, i: int) -> Metrics:
        """PoP ``i`` as ``rules.Metrics``."""
        cap, load, n = float(self.capacity[i]), float(self.load[i]), int(self.servers[i])
        qos = None if self.qos_p95_ms is None else float(self.qos_p95_ms[i])
        return Metrics(
            pop=self.pops[i],
            capacity_cores=cap,
            load_cores=load,
            servers=(ServerMetric(load / cap if cap > 0.0 else 0.0, cap / n),) * n if n else (),
            qos_p95_ms=None if qos is None or np.isnan(qos) else qos,
        )


@dataclass
class Hystereses:
    """Every PoP's ``rules.Hysteresis`` as arrays (``last_emit`` NaN: never emitted)."""

    state: IntArray  # index into STATES
    since: FloatArray
    dwell_until: FloatArray
    rule: list[str | None]
    last_emit: FloatArray

    @classmethod
    def initial(cls, pops: int, now: float) -> Hystereses:
        return cls(
            state=np.full(pops, NEUTRAL, dtype=np.int64),
            since=np.full(pops, now),
            dwell_until=np.full(pops, now),
            rule=[None] * pops,
            last_emit=np.full(pops, np.nan),
        )

    def of(self, i: int) -> Hysteresis:
        last = float(self.last_emit[i])
        return Hysteresis(
            STATES[self.state[i]],
            float(self.since[i]),
            float(self.dwell_until[i]),
            self.rule[i],
            None if np.isnan(last) else last,
        )


@dataclass(frozen=True)
class _Check:
    """One configured rule over every PoP: where it holds, at which threshold, and its reason
    (worded as in rules.py) from what PoP ``i`` measured."""

    name: str
    op: str
    holds: BoolArray
    threshold: list[float]
    measured: Callable[[int], str]

    def reason(self, i: int) -> str:
        return f"{self.name}: {self.measured(i)} {self.op} {self.threshold[i]:g}"


class _Window:
    """The rules' view of every PoP: utilisation, its servers', their count, the probes' p95."""

    def __init__(self, u: Uniform) -> None:
        cap, load = u.capacity, u.load
        safe = np.where(cap > 0.0, cap, 1.0)
        self.has_capacity = cap > 0.0
        # Metrics.utilisation, and each server's as uniform PoPs have it
        self.util = np.where(cap > 0.0, load / safe, np.where(load > 0.0, 1.0, 0.0))
        self.server_util = np.where(cap > 0.0, load / safe, 0.0)
        self.servers = u.servers
        self.qos = u.qos_p95_ms if u.qos_p95_ms is not None else np.full(cap.shape, np.nan)
        self._util, self._server_util = self.util.tolist(), self.server_util.tolist()
        self._servers, self._qos = self.servers.tolist(), self.qos.tolist()

    def server_max(self, i: int) -> str:
        return f"max {_fmt(self._server_util[i])}"

    def server_min(self, i: int) -> str:
        return f"min {_fmt(self._server_util[i])}"

    def count(self, i: int) -> str:  # a PoP's servers are all over (or under), or none is
        return f"{self._servers[i]}/{self._servers[i]}"

    def combined(self, i: int) -> str:
        return _fmt(self._util[i])

    def p95(self, i: int) -> str:
        return _fmt(self._qos[i])

    def excess(self, i: int, cap: float, load: float, target: float) -> float:
        """``rules.excess_cores``: over target, or only its servers hot (summed as it sums)."""
        combined = load - target * cap
        if combined > 0.0:
            return combined
        n = self._servers[i]
        one = max(0.0, (self._server_util[i] - target) * (cap / n)) if n else 0.0
        return sum([one] * n)

    def _counted(self, holds: BoolArray, band: CountBand) -> BoolArray:
        """``rules.quorum`` of the servers for which ``holds`` (all of a PoP's, or none)."""
        count = np.where(holds, self.servers, 0)
        total = self.servers
        ok = np.zeros(count.shape, dtype=bool)
        if band.min_count is not None:
            ok |= count >= band.min_count
        if band.min_fraction is not None:
            ok |= count / np.maximum(total, 1) >= band.min_fraction - 1e-12
        return ok & (total > 0) & (count > 0)

    def shed(self, rules: ShedRules, entering: BoolArray) -> list[_Check]:
        out = []
        su, n = self.server_util, self.servers
        if b := rules.any_server_over:
            t = _threshold(b, entering)
            out.append(
                _Check("any_server_over", ">", (n > 0) & (su > t), t.tolist(), self.server_max)
            )
        if c := rules.servers_over:
            t = _threshold(c, entering)
            holds = self._counted(su > t, c)
            out.append(_Check("servers_over", ">", holds, t.tolist(), self.count))
        if b := rules.combined_over:
            t = _threshold(b, entering)
            out.append(_Check("combined_over", ">", self.util > t, t.tolist(), self.combined))
        if b := rules.qos_p95_over_ms:
            t = _threshold(b, entering)
            out.append(_Check("qos_p95_over_ms", ">", self.qos > t, t.tolist(), self.p95))
        return out

    def can_take(self, rules: CanTakeRules, entering: BoolArray) -> list[_Check]:
        out = []
        su, n = self.server_util, self.servers
        if b := rules.any_server_under:
            t = _threshold(b, entering)
            out.append(
                _Check("any_server_under", "<", (n > 0) & (su < t), t.tolist(), self.server_min)
            )
        if c := rules.servers_under:
            t = _threshold(c, entering)
            holds = self._counted(su < t, c)
            out.append(_Check("servers_under", "<", holds, t.tolist(), self.count))
        if b := rules.combined_under:
            t = _threshold(b, entering)
            out.append(_Check("combined_under", "<", self.util < t, t.tolist(), self.combined))
        if b := rules.qos_p95_under_ms:
            t = _threshold(b, entering)
            out.append(_Check("qos_p95_under_ms", "<", self.qos < t, t.tolist(), self.p95))
        return out


def _threshold(band: Band, entering: BoolArray) -> FloatArray:
    return np.where(entering, band.enter, band.exit)


def step_many(
    h: Hystereses | None, u: Uniform, now: float, rules: PopRules
) -> tuple[Hystereses, list[PopStatusRow]]:
    """``rules.step`` for every PoP of ``u``: the new hystereses and the statuses due, in the
    PoPs' order (rows: the caller validates what it sends on a bus)."""
    n = len(u.pops)
    h = h or Hystereses.initial(n, now)
    w = _Window(u)
    dwell_over = now >= h.dwell_until
    was = h.state
    # Each rule at the threshold it would be read at, were the PoP in the state it is judged for:
    # the exit threshold to stay in the state it is in, the enter one to come into another.
    shed_checks = w.shed(rules.shed, entering=was != SHED)
    shed = ~w.has_capacity
    for c in shed_checks:
        shed |= c.holds
    take_checks = w.can_take(rules.can_take, entering=was != CAN_TAKE)
    take = w.has_capacity & bool(take_checks)
    for c in take_checks:
        take &= c.holds
    # rules._decide
    stay_shed = (was == SHED) & (shed | ~dwell_over)
    stay_take = (was == CAN_TAKE) & (take | ~dwell_over)
    state = np.where(
        stay_shed | ((was != SHED) & shed),
        SHED,
        np.where(
            stay_take | ((was != CAN_TAKE) & take & (dwell_over | (was == SHED))), CAN_TAKE, NEUTRAL
        ),
    )
    changed = state != was
    since = np.where(changed, now, h.since)
    dwell_until = np.where(changed, now + rules.min_dwell_s, h.dwell_until)
    last = np.where(changed, np.nan, h.last_emit)
    due = ~(now - last < rules.refresh_s)  # never emitted (NaN) or refresh_s ago
    last_emit = np.where(due, now, last)
    # the reasons and messages, one by one from plain values (numpy's scalars cost more so)
    states, changes, takes = state.tolist(), changed.tolist(), take.tolist()
    has_capacity = w.has_capacity.tolist()
    shed_held = [(c, c.holds.tolist()) for c in shed_checks]
    rule = list(h.rule)
    for i in np.flatnonzero((state != NEUTRAL) | (was != NEUTRAL)).tolist():
        code = states[i]
        if code == NEUTRAL:
            reasons = []
        elif code == SHED:
            held = [c.reason(i) for c, holds in shed_held if holds[i]]
            reasons = held if has_capacity[i] else [NO_CAPACITY]
        else:
            reasons = [c.reason(i) for c in take_checks] if takes[i] else []
        kept = None if changes[i] or code == NEUTRAL else rule[i]
        rule[i] = "; ".join(reasons) if reasons else kept
    out = Hystereses(state, since, dwell_until, rule, last_emit)
    rows = []  # rules.pop_status's fields
    caps, loads, sinces = u.capacity.tolist(), u.load.tolist(), since.tolist()
    utils, target = w.util.tolist(), rules.target_utilisation
    pops = u.pops
    for i in np.flatnonzero(due).tolist():
        cap, load, code, r = caps[i], loads[i], states[i], rule[i]
        excess = headroom = 0.0
        if code == SHED:
            excess = w.excess(i, cap, load, target)
        elif code == CAN_TAKE:
            headroom = max(0.0, target * cap - load)
        rows.append(
            PopStatusRow(
                pops[i],
                now,
                STATES[code],
                sinces[i],
                min(utils[i], 100.0),
                cap,
                load,
                excess,
                headroom,
                r[:MAX_REASON_CHARS] if r else None,
            )
        )
    return out, rows
