"""What the web console draws, as one JSON-ready snapshot of a :class:`NetworkView`.

Pure: the console's server (popshift/console.py) pushes a snapshot to every browser when the
view changes; tests and the 300-PoP replay call it directly. Everything the page shows is here,
so the page only lays it out: PoPs with utilisation, status and capacity; one arrow per source
and destination with its share per tier and the engine's reason; the timeline; and for the
PoP an operator focuses on, its servers, tables, forwarder counters and ``explain`` lines.
"""

from __future__ import annotations

from typing import Any

from popshift.network import NetworkConfig
from popshift.view import NetworkView, explain_lines, status_word

Json = dict[str, Any]

_VERSION = {"schema_version"}
TIMELINE = 60
"""Changes sent to the page, newest first."""


def _pop(
    view: NetworkView, network: NetworkConfig, name: str, now: float, max_age_s: float
) -> Json:
    cfg = network.pop(name)
    st = view.statuses.get(name)
    return {
        "name": name,
        "lat": cfg.lat,
        "lon": cfg.lon,
        "status": status_word(st, now, max_age_s),
        "utilisation": st.utilisation if st else None,
        "capacity_cores": st.capacity_cores if st else None,
        "load_cores": st.load_cores if st else None,
        "since_s": round(now - st.since, 1) if st else None,
        "rule": st.rule if st else None,
        "target": cfg.target_utilisation,
    }


def arrows(view: NetworkView, now: float) -> list[Json]:
    """One arrow per (source, destination) of every policy in force, its shares per tier."""
    out: list[Json] = []
    for source in sorted(view.policies):
        policy = view.in_force(source, now)
        if policy is None:
            continue
        by_destination: dict[str, list[Json]] = {}
        for s in sorted(policy.shares, key=lambda s: (s.destination, s.tier)):
            by_destination.setdefault(s.destination, []).append(
                {"tier": s.tier, "share": round(s.share, 4)}
            )
        for destination, shares in by_destination.items():
            out.append(
                {
                    "source": source,
                    "destination": destination,
                    "shares": shares,
                    "label": " ".join(f"t{x['tier']} {x['share']:.0%}" for x in shares),
                    "version": policy.version,
                    "reason": policy.reason.rule,
                    "infeasible": policy.reason.infeasible,
                    "expected": policy.reason.expected_utilisation.get(destination),
                    "lease_left_s": (
                        None if policy.expires_at is None else round(policy.expires_at - now, 1)
                    ),
                }
            )
    return out


def details(
    view: NetworkView, network: NetworkConfig, pop: str, now: float, max_age_s: float
) -> Json:
    """The drill-down of one PoP: what ``popshift explain`` says, and the raw inputs."""
    load = view.loads.get(pop)
    servers = [
        {
            "server": s.server,
            "address": s.address,
            "utilisation": s.utilisation,
            "capacity_cores": s.capacity_cores,
            "healthy": s.healthy,
            "heartbeat_age_s": round(now - s.last_seen, 1) if s.last_seen else None,
        }
        for s in (load.servers if load else [])
    ]
    tables = [
        {
            "tier": tier,
            "version": t.version,
            "policy_version": t.policy_version,
            "buckets": t.buckets,
            "buckets_away": dict(sorted(t.buckets_away.items())),
            "buckets_changed": t.buckets_changed,
            "age_s": round(now - t.written_at, 1),
        }
        for (name, tier), t in sorted(view.tables.items())
        if name == pop
    ]
    counters = [
        {"node": node, "age_s": round(now - stats.at, 1), **row.model_dump(exclude=_VERSION)}
        for (name, node), stats in sorted(view.counters.items())
        if name == pop
        for row in stats.tiers
    ]
    return {
        "pop": pop,
        "explain": explain_lines(view, network, pop, now, max_age_s),
        "servers": servers,
        "pop_load_age_s": round(now - load.at, 1) if load else None,
        "tables": tables,
        "counters": counters,
    }


def snapshot(
    view: NetworkView,
    network: NetworkConfig,
    now: float,
    max_age_s: float,
    focus: str | None = None,
) -> Json:
    """Everything the page shows at ``now``; the drill-down only for ``focus`` (explaining
    every one of 300 PoPs on every push would cost more than drawing them)."""
    timeline = [
        {
            "at": c.at,
            "ago_s": round(now - c.at, 1),
            "kind": c.kind,
            "pop": c.pop,
            "text": c.text,
            "reason": c.reason,
        }
        for c in sorted(view.history, key=lambda c: c.at, reverse=True)[:TIMELINE]
    ]  # by time, newest first: the topics arrive interleaved in any order
    return {
        "now": now,
        "pops": [_pop(view, network, name, now, max_age_s) for name in network.pop_names],
        "arrows": arrows(view, now),
        "timeline": timeline,
        "lag": view.lag,
        "focus": (
            details(view, network, focus, now, max_age_s)
            if focus is not None and focus in network.pop_names
            else None
        ),
    }
