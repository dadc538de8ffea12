"""The run as a reader sees it: a timeline (text and PNG), the totals and the checks.

Pure functions of a `lab.record.Result`, except `plot` (writes a file) and `print_report`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from lab.app.results import Kind, Outcome
from lab.checks import Check, checks, format_checks, shed_thresholds
from lab.record import Result, longs


@dataclass
class Row:
    t: float
    util: dict[str, float]
    state: dict[str, str]
    shares: str
    new_a: dict[str, int]  # region a's new connections in the step, by answering PoP
    new_ok: int
    new_failed: int
    long_live: dict[str, int]  # long connections open at t, by PoP
    long_failed: int  # long connections failed so far


def _shares_text(shares: Mapping[str, Mapping[str, float]]) -> str:
    parts = [
        f"{src}->{dst} {x:.0%}"
        for src, dests in sorted(shares.items())
        for dst, x in sorted(dests.items())
        if x > 0
    ]
    return ", ".join(parts) or "-"


def timeline(result: Result, step_s: float = 2.0) -> list[Row]:
    """One row per step: loads, shares in force, connections by outcome and by PoP."""
    if not result.samples:
        return []
    rows = []
    end = result.samples[-1].t
    t = step_s * (result.samples[0].t // step_s + 1)  # from the first sample on
    sample_i = 0
    failed_longs = sorted(
        t2.record.start + t2.record.duration_s
        for t2 in longs(result)
        if t2.record.outcome is not Outcome.OK
    )
    while t <= end:
        while sample_i + 1 < len(result.samples) and result.samples[sample_i + 1].t <= t:
            sample_i += 1
        s = result.samples[sample_i]
        window = [
            tr.record
            for tr in result.traffic
            if tr.record.kind is Kind.SHORT and t - step_s <= tr.record.start < t
        ]
        from_a = [
            tr.record
            for tr in result.traffic
            if tr.region == "a"
            and tr.record.kind is Kind.SHORT
            and t - step_s <= tr.record.start < t
            and tr.record.outcome is Outcome.OK
        ]
        live = Counter(
            tr.record.pop
            for tr in longs(result)
            if tr.record.start <= t < tr.record.start + tr.record.duration_s and tr.record.pop
        )
        rows.append(
            Row(
                t=t,
                util=dict(s.util),
                state=dict(s.state),
                shares=_shares_text(s.shares),
                new_a=dict(Counter(r.pop for r in from_a)),
                new_ok=sum(1 for r in window if r.outcome is Outcome.OK),
                new_failed=sum(1 for r in window if r.outcome is not Outcome.OK),
                long_live=dict(live),
                long_failed=sum(1 for x in failed_longs if x <= t),
            )
        )
        t += step_s
    return rows


_MARK_NAMES = {
    "load_on": "load starts",
    "overload_gone": "overload gone",
    "load_off": "load stops",
    "late_longs_on": "long conns opened in region a",
    "cancel": "policies cancelled",
    "late_longs_off": "long conns closed",
    "drained": "drain complete",
    "pin_on": "pin a->b 25%",
    "pin_off": "pin cleared",
    "infeasible_on": "load beyond capacity",
    "infeasible_off": "beyond-capacity load stops",
}


def format_timeline(result: Result, step_s: float = 2.0) -> str:
    """The timeline as text, with the run's marks where they fall."""
    pops = result.pops
    head = (
        f"{'t(s)':>5} | "
        + " ".join(f"{'load ' + p:>7}" for p in pops)
        + f" | {'shares in force':24} | {'new from a: by PoP':20} | {'new ok/fail':11} | "
        + f"{'long by PoP':16} | lfail"
    )
    lines = [head, "-" * len(head)]
    marks = sorted(result.marks.items(), key=lambda kv: kv[1])
    mi = 0
    for row in timeline(result, step_s):
        while mi < len(marks) and marks[mi][1] <= row.t:
            name, at = marks[mi]
            lines.append(f"{at:5.1f} | --- {_MARK_NAMES.get(name, name)}")
            mi += 1
        loads = " ".join(
            f"{row.util.get(p, 0.0):6.0%}{'!' if row.state.get(p) == 'shed' else ' '}" for p in pops
        )
        by_pop = " ".join(f"{p}:{row.new_a.get(p, 0)}" for p in pops)
        live = " ".join(f"{p}:{row.long_live.get(p, 0)}" for p in pops)
        lines.append(
            f"{row.t:5.0f} | {loads} | {row.shares:24} | {by_pop:20} | "
            f"{row.new_ok:5}/{row.new_failed:<5} | {live:16} | {row.long_failed:5}"
        )
    return "\n".join(lines)


def totals(result: Result) -> dict[str, Any]:
    """Connections by kind, outcome and answering PoP: the summary under the timeline."""
    out: dict[str, Any] = {}
    for kind in Kind:
        recs = [t.record for t in result.traffic if t.record.kind is kind]
        out[kind.value] = {
            "total": len(recs),
            "by_outcome": dict(sorted(Counter(r.outcome.value for r in recs).items())),
            "by_pop": dict(sorted(Counter(r.pop for r in recs if r.pop).items())),
        }
    return out


def plot(result: Result, path: Path, step_s: float = 2.0) -> None:
    """The timeline as a PNG: load, shares (in force and measured), connections per second."""
    matplotlib.use("Agg")  # no display: before pyplot picks a backend
    import matplotlib.pyplot as plt

    fig, (ax_load, ax_share, ax_conn) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ts = [s.t for s in result.samples]
    for p in result.pops:
        ax_load.plot(ts, [s.util.get(p, 0.0) * 100 for s in result.samples], label=f"PoP {p}")
        shed = [s.t for s in result.samples if s.state.get(p) == "shed"]
        if shed:
            ax_load.scatter(shed, [102] * len(shed), marker="|", s=30)
    ax_load.axhline(75, color="grey", ls=":", lw=1)
    for limit in set(shed_thresholds(result).values()):
        ax_load.axhline(limit * 100, color="red", ls=":", lw=1)
    on = result.marks.get("load_on")
    if on is not None and "load_off" in result.marks:  # the overload, shaded until it was gone
        gone = result.marks.get("overload_gone")
        ax_load.axvspan(on, gone or result.marks["load_off"], color="red", alpha=0.08)
        said = f"overload gone\nafter {gone - on:.1f} s" if gone else "overload never gone"
        ax_load.text(gone or on, 50, f" {said}", fontsize=8)
    ax_load.set_ylabel("utilisation %\n(| = flagged shed;\nred: shed threshold)")
    ax_load.legend(loc="upper right", fontsize=8)
    pairs = sorted({(src, dst) for s in result.samples for src, d in s.shares.items() for dst in d})
    for src, dst in pairs:
        ax_share.step(
            ts,
            [s.shares.get(src, {}).get(dst, 0.0) * 100 for s in result.samples],
            where="post",
            label=f"{src}->{dst} in force",
        )
    rows = timeline(result, step_s)
    measured = [
        (r.t - step_s / 2, 100 * r.new_a.get("b", 0) / max(1, sum(r.new_a.values())))
        for r in rows
        if sum(r.new_a.values())
    ]
    if measured:
        ax_share.plot(*zip(*measured, strict=True), ".", label="region a answered by b (measured)")
    ax_share.set_ylabel("share of new conns %")
    ax_share.legend(loc="upper right", fontsize=8)
    for p in result.pops:
        ax_conn.plot(
            [r.t for r in rows],
            [r.new_a.get(p, 0) / step_s for r in rows],
            label=f"region a answered by {p}",
        )
    ax_conn.plot([r.t for r in rows], [r.new_failed / step_s for r in rows], "r--", label="failed")
    ax_conn.plot([r.t for r in rows], [r.long_failed for r in rows], "k:", label="long failed")
    ax_conn.set_ylabel("connections / s")
    ax_conn.set_xlabel("seconds")
    ax_conn.legend(loc="upper right", fontsize=8)
    for ax in (ax_load, ax_share, ax_conn):
        for name, at in result.marks.items():
            if name in _MARK_NAMES:
                ax.axvline(at, color="grey", lw=0.6, ls="--")
    for name, at in result.marks.items():
        if name in _MARK_NAMES:
            ax_load.text(at, 108, _MARK_NAMES[name], rotation=90, fontsize=6, va="bottom")
    fig.suptitle("popshift overload scenario: A overloaded, A->B, cascade B->C, cancel, drain")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(result: Result, out_dir: Path) -> list[Check]:
    """Print the timeline, the totals and the checks; write the PNG. Returns the checks."""
    print(format_timeline(result))
    print(json.dumps(totals(result)))
    done = list(checks(result).values())
    print(format_checks(done))
    png = out_dir / "timeline.png"
    plot(result, png)
    print(f"plot: {png}")
    return done
