"""One PoP's table writer as a pure state machine: policies and server lists in, table writes out.

The adapter (service.py) or the simulator calls :func:`on_policy`, :func:`on_servers` and
:func:`on_tick`; each returns the :class:`Write` s to perform, already checked against the
invariants. After a write is durable, :func:`commit` makes it the state's current table, so a
failed write is simply retried from the same state.

Leases: a forwarder sync follows a table only for a lease after the ``written_at`` in its
header (docs/forwarding-tables.md#leases), so :func:`on_tick` also renews every tier whose
current version is older than ``renew_s``: the same records again as the next version. A writer
that stops (or a control plane that stops feeding it) therefore lets its PoP fall back to local.

Policy leases: a policy carries ``expires_at`` (the engine renews it every tick while its inputs
are fresh). It is in force here until ``min(received + (expires_at - issued_at), expires_at +
MAX_CLOCK_SKEW_S)`` on this writer's clock: the lease's length counts from its arrival, so a
skewed clock neither shortens nor stretches it, and a stale policy replayed long after it expired
is in force for at most the skew. :func:`on_tick` drops a lapsed policy's shares back to local,
draining as usual, and says so in ``WriterState.lapsed_version`` / ``lapses``. While the
bus is silent (no message of any PoP, :func:`on_heard`), the lease does not age, for at most
the grace (popshift/silence.py): a Kafka outage is not a dead engine.

Inputs checked against the network (popshift/admission.py), on top of the ingest's own checks,
since anyone who can write pop-load.v1 or policies.v1 could otherwise steer the PoP: a server
list is refused whole if one server lies outside the PoP's server prefixes or claims more than
its capacity bound (the local servers, every primary, come only from accepted lists); a policy
is refused if a share names an unknown PoP or tier, forwards a tier that may not be forwarded or
goes farther than the tier's latency bound, or if it comes from an epoch the engines' lock has
not reached (``current_epoch`` of :func:`on_policy`). A refusal changes no state and no bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from popshift.admission import check_address, check_epoch, check_server, check_share
from popshift.network import NetworkConfig
from popshift.silence import BusSilence
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
    """A policy this PoP must not apply: not its own, a version absurdly far ahead, an issue
    time in the future. (What the network does not allow raises admission.Refused.)"""


MAX_CLOCK_SKEW_S = 30.0
"""The most the policy engine's clock may run ahead of a writer's: a policy issued further in
the future is refused, and an expired one is kept at most this long past its ``expires_at``."""
MAX_POLICY_VERSION = 2**62
"""Versions at or above this are refused: one such policy would shadow every real one after it
(2^62 is 146,000 years of a million versions a second)."""
MAX_VERSION_JUMP = 1_000_000
MAX_VERSION_RATE = 10_000.0
"""A version more than ``MAX_VERSION_JUMP + MAX_VERSION_RATE x seconds since the last policy``
beyond the current one is refused (the engine's versions are shared by every source PoP: 10,000
a second is a renewal of 10,000 PoPs every second). Not checked before the first policy after a
start (the writer does not know how long it was away)."""


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
    network: NetworkConfig
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
    epoch: int = 0
    """The engine leadership epoch of the current policy: policies are ordered by (epoch,
    version), and a newer version from an older epoch is a deposed engine's, refused."""
    tables: dict[int, TierTable] = field(default_factory=dict)
    renew_s: float = DEFAULT_RENEW_S
    lease_until: float | None = None
    """The current policy is dropped to local at this time (None: no lease known or needed)."""
    lease_s: float = 0.0  # the current policy's lease length (expires_at - issued_at)
    policy_seen_at: float | None = None  # when the current policy arrived (None: not yet)
    lapsed_version: int | None = None
    """The policy version whose lease ran out and was dropped to local (None: none in force
    lapsed); a newer policy clears it."""
    lapses: int = 0
    silence: BusSilence = field(default_factory=BusSilence)


def new_state(
    network: NetworkConfig,
    pop: str,
    bits: int,
    drain_period_s: float,
    renew_s: float = DEFAULT_RENEW_S,
    silence: BusSilence | None = None,
) -> WriterState:
    me = network.pop(pop)
    return WriterState(
        network=network,
        silence=silence or BusSilence(),
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
    """Take over a table found in Redis after a restart; Refused (nothing adopted) if a bucket
    points at an address that is none of the PoP's servers (written by a forged server list
    before this writer checked them): the tier is then written afresh."""
    me = state.network.pop(state.pop)
    local = {b.primary for b in table}
    local.update(b.secondary for b in table if b.secondary is not None and not b.inter_pop)
    for address in sorted(local):
        check_address(state.network, me, "(a bucket in Redis)", address)
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
        check_share(state.network, state.pop, s.tier, s.destination, s.share)
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


def _check_freshness(state: WriterState, event: PolicyEvent, now: float) -> None:
    if event.issued_at > now + MAX_CLOCK_SKEW_S:
        raise PolicyRejected(
            f"issued_at {event.issued_at:.3f} is {event.issued_at - now:.1f} s in the future"
            f" (more than the {MAX_CLOCK_SKEW_S:g} s clock skew allowed)"
        )
    if event.version >= MAX_POLICY_VERSION or event.epoch >= MAX_POLICY_VERSION:
        raise PolicyRejected(
            f"version {event.version} epoch {event.epoch}: one >= {MAX_POLICY_VERSION}, absurd"
        )
    if state.policy_seen_at is not None and event.epoch == state.epoch:
        elapsed = max(0.0, now - state.policy_seen_at)
        limit = state.policy_version + MAX_VERSION_JUMP + int(MAX_VERSION_RATE * elapsed)
        if event.version > limit:
            raise PolicyRejected(
                f"version {event.version} is absurdly far beyond the current"
                f" {state.policy_version} (more than {limit - state.policy_version} ahead)"
            )


def _lease_until(state: WriterState, event: PolicyEvent, now: float) -> float | None:
    if event.expires_at is None:
        return None
    state.lease_s = event.expires_at - event.issued_at
    # A renewal that waited out a Kafka outage in the engine's queue: its lease was held too.
    held = state.silence.held_up(event.issued_at)
    return min(
        now + (event.expires_at - event.issued_at), event.expires_at + MAX_CLOCK_SKEW_S + held
    )


def _lapse(state: WriterState) -> None:
    """The policy's lease ran out: every tier back to local (the next writes drain as usual)."""
    state.shares = {t: {} for t in state.forwardable}
    state.lapsed_version = state.policy_version
    state.lapses += 1
    state.lease_until = None


def on_policy(
    state: WriterState, event: PolicyEvent, now: float, current_epoch: int | None = None
) -> list[Write]:
    """A newer policy for this PoP: the tables that meet it. Replays of older ones do nothing,
    except that the policy of tables adopted after a restart gives them its lease; a newer
    version from an older epoch (a deposed engine) is refused, and so is any policy from an
    epoch above ``current_epoch``, the engines' lock's (a forgery that would otherwise shadow
    every real policy after it; None: not known, not checked)."""
    check_epoch(event.epoch, current_epoch)
    adopted_own = (
        state.policy_seen_at is None
        and state.lease_until is None
        and event.version == state.policy_version
    )
    if adopted_own:  # the adopted tables' own policy, replayed: its epoch and lease
        _check_freshness(state, event, now)
        state.epoch = max(state.epoch, event.epoch)
        state.policy_seen_at = now
        state.lease_until = _lease_until(state, event, now)
        return []
    if event.epoch < state.epoch:
        if event.version <= state.policy_version:
            return []  # an old message delivered again
        raise PolicyRejected(
            f"v{event.version} from engine epoch {event.epoch}, but epoch {state.epoch} leads:"
            " a deposed engine's policy"
        )
    if event.epoch == state.epoch and event.version <= state.policy_version:
        return []
    _check_freshness(state, event, now)
    before = (state.shares, state.policy_version, state.epoch, state.lapsed_version, state.lapses)
    state.shares = _validate(state, event)
    state.policy_version = event.version
    state.epoch = event.epoch
    state.lapsed_version = None
    lease_until = _lease_until(state, event, now)
    if lease_until is not None and lease_until <= now:
        _lapse(state)  # expired before it arrived (a replay of a dead engine's last word)
    try:
        writes = _writes(state, now, rebalance=False, changed_shares_only=True)
    except TableInvariantError:
        # The refused policy leaves no trace.
        state.shares, state.policy_version, state.epoch, state.lapsed_version, state.lapses = before
        raise
    state.lease_until = lease_until if state.lapsed_version is None else None
    state.policy_seen_at = now
    return writes


def on_servers(state: WriterState, load: PopLoad, now: float) -> list[Write]:
    """A new server list: primaries follow the healthy servers' capacity."""
    if load.pop != state.pop:
        raise PolicyRejected(f"pop-load of {load.pop} sent to {state.pop}'s table writer")
    me = state.network.pop(state.pop)
    for s in load.servers:  # every one, healthy or not: each becomes a local address
        check_server(state.network, me, s.server, s.address, s.capacity_cores)
    healthy = sorted(
        (Server(str(s.address), s.capacity_cores) for s in load.servers if s.healthy),
        key=lambda s: s.address,
    )
    state.local_addresses.update(str(s.address) for s in load.servers)
    if not healthy or healthy == state.servers:
        return []
    state.servers = healthy
    return _writes(state, now, rebalance=True)


def on_heard(state: WriterState, now: float) -> None:
    """Any message arrived (of any PoP, on any of the writer's topics): the bus works."""
    state.silence.heard(now)


def on_tick(state: WriterState, now: float) -> list[Write]:
    """Time passes: a policy whose lease ran out goes back to local, drains that have run their
    period are cleared, table leases are renewed."""
    pause = state.silence.pause(now)
    if state.lease_until is not None:
        state.lease_until = state.silence.after(state.lease_until + pause, state.lease_s)
        if state.silence.expired(state.lease_until, now):
            _lapse(state)
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
