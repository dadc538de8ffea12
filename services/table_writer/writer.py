"""One PoP's table writer as a pure state machine: policies and server lists in, table writes out.

The adapter (service.py) or the simulator calls :func:`on_policy`, :func:`on_servers` and
:func:`on_tick`; each returns the :class:`Write` s to perform, already checked against the
invariants. After a write is durable, :func:`commit` makes it the state's current table, so a
failed write is simply retried from the same state.

Leases: a forwarder sync follows a table only for a lease after the ``written_at`` in its
header (docs/forwarding-tables.md#leases), so :func:`on_tick` also renews every tier whose
current version is older than ``renew_s``: the same records again as the next version. A writer
that stops (or a control plane that stops feeding it) therefore lets its PoP fall back to local.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popshift.network import NetworkConfig
from schemas.messages import PolicyAction, PolicyEvent, PopLoad
from services.table_writer.table import (
    Peer,
    Server,
    Table,
    TableInvariantError,
    apply_policy,
    changed_buckets,
    check_invariants,
    new_table,
    rebalance_primaries,
)


class PolicyRejected(ValueError):
    """A policy this PoP must not apply: not its own, an unknown destination, an immovable tier."""


@dataclass(frozen=True)
class Write:
    """A table version to store, and the buckets that changed since the current one."""

    tier: int
    version: int
    policy_version: int
    table: Table
    shares: dict[str, float]
    changed: list[int]
    written_at: float


@dataclass
class TierTable:
    table: Table
    version: int
    shares: dict[str, float]
    written_at: float = 0.0  # 0: not known (adopted after a restart), so renewed at once


DEFAULT_RENEW_S = 5.0
"""A third of the forwarder sync's default lease (15 s): two renewals may be lost in a row."""


@dataclass
class WriterState:
    pop: str
    self_id: int
    bits: int
    drain_period_s: float
    peers: dict[str, Peer]
    forwardable: dict[int, bool]
    servers: list[Server] = field(default_factory=list)
    local_addresses: set[str] = field(default_factory=set)
    shares: dict[int, dict[str, float]] = field(default_factory=dict)
    policy_version: int = 0
    tables: dict[int, TierTable] = field(default_factory=dict)
    renew_s: float = DEFAULT_RENEW_S


def new_state(
    network: NetworkConfig,
    pop: str,
    bits: int,
    drain_period_s: float,
    renew_s: float = DEFAULT_RENEW_S,
) -> WriterState:
    me = network.pop(pop)
    return WriterState(
        pop=pop,
        self_id=me.id,
        bits=bits,
        drain_period_s=drain_period_s,
        renew_s=renew_s,
        peers={p.name: Peer(p.name, p.id, str(p.ingress)) for p in network.pops if p.name != pop},
        forwardable={t.id: t.forwardable for t in network.tiers},
    )


def adopt(
    state: WriterState,
    tier: int,
    table: Table,
    version: int,
    policy_version: int,
    shares: dict[str, float],
) -> None:
    """Take over a table found in Redis after a restart."""
    state.tables[tier] = TierTable(table, version, dict(shares))
    state.shares.setdefault(tier, dict(shares))
    state.policy_version = max(state.policy_version, policy_version)
    for b in table:
        state.local_addresses.add(b.primary)
        if b.secondary is not None and not b.inter_pop:
            state.local_addresses.add(b.secondary)


def _validate(state: WriterState, event: PolicyEvent) -> dict[int, dict[str, float]]:
    if event.source != state.pop:
        raise PolicyRejected(f"policy of {event.source} sent to {state.pop}'s table writer")
    shares: dict[int, dict[str, float]] = {t: {} for t in state.forwardable}
    if event.action is PolicyAction.CANCEL:
        return shares
    for s in event.shares:
        if s.destination not in state.peers:
            raise PolicyRejected(f"unknown destination PoP {s.destination!r}")
        if s.tier not in state.forwardable:
            raise PolicyRejected(f"unknown tier {s.tier}")
        if not state.forwardable[s.tier] and s.share > 0.0:
            raise PolicyRejected(f"tier {s.tier} may not be forwarded")
        shares[s.tier][s.destination] = s.share
    return shares


def _writes(
    state: WriterState, now: float, *, rebalance: bool, changed_shares_only: bool = False
) -> list[Write]:
    """Every tier's next table, where it differs from the current one; invariants checked.

    ``changed_shares_only`` (a policy event) leaves tiers whose shares did not change alone:
    their drains expire on the next tick, and the policy's own tier is written sooner.
    """
    if not state.servers:
        return []  # nothing to be primary: keep the last table (fail static)
    writes: list[Write] = []
    for tier, forwardable in sorted(state.forwardable.items()):
        current = state.tables.get(tier)
        shares = state.shares.get(tier, {})
        if changed_shares_only and current is not None and current.shares == shares:
            continue
        if current is None:
            table = new_table(state.servers, state.bits, now)
        elif rebalance:
            table = rebalance_primaries(current.table, state.servers, now)
        else:
            table = current.table
        table = apply_policy(table, shares, state.peers, now, state.drain_period_s)
        changed = changed_buckets(current.table if current else None, table)
        if current is not None and not changed and current.shares == shares:
            continue
        check_invariants(
            table,
            bits=state.bits,
            self_id=state.self_id,
            shares=shares,
            peers=state.peers,
            local_addresses=state.local_addresses,
            forwardable=forwardable,
            buckets=changed if current is not None else None,
        )
        version = (current.version if current else 0) + 1
        writes.append(Write(tier, version, state.policy_version, table, dict(shares), changed, now))
    return writes


def on_policy(state: WriterState, event: PolicyEvent, now: float) -> list[Write]:
    """A newer policy for this PoP: the tables that meet it. Replays of older ones do nothing."""
    if event.version <= state.policy_version:
        return []
    before = (state.shares, state.policy_version)
    state.shares = _validate(state, event)
    state.policy_version = event.version
    try:
        return _writes(state, now, rebalance=False, changed_shares_only=True)
    except TableInvariantError:
        state.shares, state.policy_version = before  # the refused policy leaves no trace
        raise


def on_servers(state: WriterState, load: PopLoad, now: float) -> list[Write]:
    """A new server list: primaries follow the healthy servers' capacity."""
    if load.pop != state.pop:
        raise PolicyRejected(f"pop-load of {load.pop} sent to {state.pop}'s table writer")
    healthy = sorted(
        (Server(str(s.address), s.capacity_cores) for s in load.servers if s.healthy),
        key=lambda s: s.address,
    )
    state.local_addresses.update(str(s.address) for s in load.servers)
    if not healthy or healthy == state.servers:
        return []
    state.servers = healthy
    return _writes(state, now, rebalance=True)


def on_tick(state: WriterState, now: float) -> list[Write]:
    """Time passes: drains that have run their period are cleared, leases are renewed."""
    writes = _writes(state, now, rebalance=False)
    written = {w.tier for w in writes}
    for tier, current in sorted(state.tables.items()):
        if tier not in written and now - current.written_at >= state.renew_s:
            writes.append(
                Write(
                    tier,
                    current.version + 1,
                    state.policy_version,
                    current.table,
                    dict(current.shares),
                    [],
                    now,
                )
            )
    return writes


def commit(state: WriterState, write: Write) -> None:
    """The write is durable: it is now the current table."""
    state.tables[write.tier] = TierTable(write.table, write.version, write.shares, write.written_at)
