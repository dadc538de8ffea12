"""What a run leaves behind: a printed table, CSV files, PNG plots and a short markdown report.

Plots use matplotlib's Agg backend (files only, no display), imported only when plots are made so
that the simulator itself does not need matplotlib.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sim.engine import RunResult
from sim.scenario import Scenario
from sim.world import World, describe

COLUMNS = [
    ("overload_pop_s", "overload PoP-s", "{:.0f}"),
    ("peak_util", "peak util", "{:.2f}"),
    ("p99_util", "p99 util", "{:.2f}"),
    ("broken", "broken conns", "{:.0f}"),
    ("lost_to_failure", "lost (failure)", "{:.0f}"),
    ("forwarded_share", "fwd share", "{:.2%}"),
    ("added_ms_p50", "added ms p50", "{:.1f}"),
    ("added_ms_p99", "added ms p99", "{:.1f}"),
    ("table_churn_buckets", "churn buckets", "{:.0f}"),
    ("policy_changes_per_h", "changes/h", "{:.1f}"),
    ("oscillations", "oscillations", "{:.0f}"),
]


def fmt(value: float, pattern: str) -> str:
    return "-" if math.isnan(value) else pattern.format(value)


def table(results: Sequence[RunResult]) -> str:
    """A fixed-width text table, one row per strategy."""
    head = ["strategy", *[c[1] for c in COLUMNS]]
    rows = [[r.strategy, *[fmt(r.summary[k], p) for k, _, p in COLUMNS]] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.rjust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def overload_removed_vs_oracle(results: Sequence[RunResult]) -> float:
    """Q = (none - popshift) / (none - oracle), in overload PoP-seconds; nan if undefined."""
    by = {r.strategy: r.summary["overload_pop_s"] for r in results}
    if not {"none", "popshift", "oracle"} <= by.keys():
        return float("nan")
    gap = by["none"] - by["oracle"]
    return (by["none"] - by["popshift"]) / gap if gap > 0 else float("nan")


def overload_vs_oracle(results: Sequence[RunResult]) -> float:
    """popshift's overload PoP-seconds over the oracle's; nan if undefined."""
    by = {r.strategy: r.summary["overload_pop_s"] for r in results}
    if not {"popshift", "oracle"} <= by.keys() or by["oracle"] <= 0.0:
        return float("nan")
    return by["popshift"] / by["oracle"]


def write_csv(results: Sequence[RunResult], world: World, out: Path) -> None:
    keys = sorted({k for r in results for k in r.summary})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", *keys, "conservation_error"])
        for r in results:
            w.writerow([r.strategy, *[r.summary.get(k, "") for k in keys], r.conservation_error])
    with open(out / "utilisation_over_time.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "t_s", "max_util", "p99_util", "mean_util", "overloaded_pops"])
        for r in results:
            for t, row in zip(r.sample_t, r.utilisation, strict=True):
                live = row[row > 0.0]
                w.writerow(
                    [
                        r.strategy,
                        f"{t:.0f}",
                        f"{live.max() if live.size else 0.0:.4f}",
                        f"{np.percentile(live, 99) if live.size else 0.0:.4f}",
                        f"{live.mean() if live.size else 0.0:.4f}",
                        int((row > 1.0).sum()),
                    ]
                )
    with open(out / "overload_per_pop.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pop", "capacity_cores", *[r.strategy for r in results]])
        for i, name in enumerate(world.pop_names):
            w.writerow(
                [
                    name,
                    f"{world.capacity[i]:.0f}",
                    *[f"{r.overload_per_pop[i]:.0f}" for r in results],
                ]
            )


def write_plots(results: Sequence[RunResult], world: World, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for r in results:
        hours = r.sample_t / 3600.0
        u = np.where(r.utilisation > 0.0, r.utilisation, np.nan)
        ax1.plot(hours, np.nanmax(u, axis=1), label=r.strategy, lw=1)
        ax2.plot(hours, (r.utilisation > 1.0).sum(axis=1), label=r.strategy, lw=1)
    ax1.axhline(1.0, color="k", ls=":", lw=0.8)
    ax1.set_ylabel("max PoP utilisation")
    ax2.set_ylabel("PoPs overloaded")
    ax2.set_xlabel("hours since start")
    ax1.legend(ncol=3, fontsize=8)
    ax1.set_title("Utilisation over time per strategy")
    fig.tight_layout()
    fig.savefig(out / "utilisation.png", dpi=110)
    plt.close(fig)
    files.append("utilisation.png")

    order = np.argsort(world.pop_lon)
    fig, axes = plt.subplots(
        len(results), 1, figsize=(11, 1.8 * len(results) + 1), sharex=True, layout="constrained"
    )
    axes_list = list(np.atleast_1d(axes))
    image = None
    for ax, r in zip(axes_list, results, strict=True):
        hours = r.sample_t / 3600.0
        span = hours[-1] if hours.size else 1.0
        image = ax.imshow(
            r.utilisation[:, order].T,
            aspect="auto",
            origin="lower",
            extent=(0.0, float(span), 0.0, float(world.n_pops)),
            vmin=0.0,
            vmax=1.2,
            cmap="turbo",
            interpolation="nearest",
        )
        ax.set_ylabel(f"{r.strategy}\nPoPs W->E", fontsize=8)
    axes_list[-1].set_xlabel("hours since start")
    if image is not None:
        fig.colorbar(image, ax=axes_list, label="utilisation (1.2 and above: darkest red)")
    fig.suptitle("Per-PoP utilisation (PoPs ordered by longitude)")
    fig.savefig(out / "heatmap.png", dpi=110)
    plt.close(fig)
    files.append("heatmap.png")
    return files


def write_markdown(
    scenario: Scenario, world: World, results: Sequence[RunResult], out: Path, plots: list[str]
) -> None:
    q = overload_removed_vs_oracle(results)
    tiers = ", ".join(
        f"{t.name} (forwardable={t.forwardable}, bound {t.max_added_latency_ms:g} ms, "
        f"lifetime {t.mean_lifetime_s:g} s)"
        for t in world.tiers
    )
    lines = [
        f"# popshift simulate: {scenario.name}",
        "",
        f"- world: {describe(world)}",
        f"- clock: {scenario.duration_s / 3600:.1f} h from {scenario.start_utc_h:g} h UTC, "
        f"tick {scenario.tick_s:g} s, seed {scenario.seed}",
        f"- tiers: {tiers}",
        f"- events: {len(scenario.events)} (" + ", ".join(e.kind for e in scenario.events) + ")",
        f"- overload: a PoP above {scenario.overload_utilisation:g} x its healthy capacity",
        "",
        "```",
        table(results),
        "```",
        "",
        f"overload_removed_vs_oracle (Q): {q:.3f}" if not math.isnan(q) else "Q: n/a",
        "",
        "Broken = established connections cut by a strategy's own routing change (BGP).",
        "Lost (failure) = connections on a PoP that went dark, or sent to it before anyone",
        "noticed: the event's doing, counted apart. Added latency is over forwarded / moved",
        "new connections only.",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
