"""One PoP x tier forwarding table and every change to it, with no I/O.

A table is a list of ``2^N`` :class:`~schemas.bucket.Bucket` s (docs/forwarding-tables.md). The
rules that keep established connections alive:
- a policy share ``p`` to PoP B is met by exactly ``round(p * 2^N)`` buckets with secondary B and
  direction away; a change touches only as many buckets as it must, least recently modified
  first (patent (53), (59));
- a share going down sets direction back but keeps B as secondary, so connections already living
  in B still reach it by second chance; the secondary is cleared after the drain period (69);
- primaries follow server capacity; when a bucket's primary moves, the old primary becomes an
  intra-PoP secondary, so its connections survive the same way;
- received traffic is never forwarded again (58), (89): every inter-PoP secondary is flagged
  ``inter_pop`` (the forwarder ignores those for decapsulated packets) and every other address in
  the table is a local server.
:func:`check_invariants` proves those rules before any table is written.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.bucket import Bucket

Table = list[Bucket]


@dataclass(frozen=True)
class Server:
    """A healthy local compute server: its external address and capacity in cores."""

    address: str
    capacity: float


@dataclass(frozen=True)
class Peer:
    """Another PoP as a table sees it: its numeric id and the ingress address to encapsulate to."""

    name: str
    id: int
    ingress: str


class TableInvariantError(Exception):
    """A table breaks a rule it must keep; it is never written. ``violations`` lists each one."""

    def __init__(self, violations: list[str]) -> None:
        self.violations = violations
        shown = "; ".join(violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"table refused: {shown}{more}")


def _apportion(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Largest-remainder split of ``total`` by ``weights`` (each within one of its exact part)."""
    mass = sum(weights.values())
    if mass <= 0.0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / mass for k, w in weights.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(counts.values())
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[:left]:
        counts[k] += 1
    return counts


def server_quotas(servers: Sequence[Server], size: int) -> dict[str, int]:
    """How many buckets each server should be primary for: proportional to capacity."""
    return _apportion({s.address: s.capacity for s in servers}, size)


def bucket_counts(shares: Mapping[str, float], size: int) -> dict[str, int]:
    """Buckets per destination: ``round(share * size)``, trimmed so they fit in the table."""
    counts = {d: math.floor(x * size + 0.5) for d, x in shares.items() if x > 0.0}
    over = sum(counts.values()) - size
    # Shares summing to 1 can round up past the table; take back from the largest round-ups.
    for d in sorted(counts, key=lambda d: shares[d] * size - counts[d])[: max(0, over)]:
        counts[d] -= 1
    return counts


def new_table(servers: Sequence[Server], bits: int, now: float) -> Table:
    """A table with primaries by capacity, interleaved so each server's buckets are spread."""
    size = 1 << bits
    quotas = server_quotas(servers, size)
    # A stride scheduler: each server comes up every size/quota buckets.
    heap = [(size / (2 * q), a, size / q) for a, q in sorted(quotas.items()) if q > 0]
    heapq.heapify(heap)
    table: Table = []
    for _ in range(size):
        pos, address, stride = heapq.heappop(heap)
        table.append(Bucket(primary=address, modified_at=now))
        heapq.heappush(heap, (pos + stride, address, stride))
    return table


def _lrm(table: Table, indices: Sequence[int]) -> list[int]:
    """``indices`` least recently modified first (index breaks ties, so the order is stable)."""
    return sorted(indices, key=lambda i: (table[i].modified_at, i))


def rebalance_primaries(table: Table, servers: Sequence[Server], now: float) -> Table:
    """Move only the buckets that must move so primaries follow capacity.

    Buckets of a server that left move first; then an over-quota server gives up its least
    recently modified buckets, preferring those without a secondary in use. The old primary
    becomes the bucket's intra-PoP secondary (direction back) unless the bucket already has an
    inter-PoP secondary, which keeps priority: it carries connections living in another PoP.
    """
    if not servers:
        raise ValueError("no healthy server: keep the last table (fail static)")
    quotas = server_quotas(servers, len(table))
    held: dict[str, list[int]] = {}
    for i, b in enumerate(table):
        held.setdefault(b.primary, []).append(i)
    moving: list[int] = []
    for address, idx in held.items():
        surplus = len(idx) - quotas.get(address, 0)
        if surplus > 0:
            ranked = sorted(
                idx, key=lambda i: (table[i].secondary is not None, table[i].modified_at, i)
            )
            moving.extend(ranked[:surplus])
    if not moving:
        return table
    deficit = {a: q - len(held.get(a, [])) for a, q in quotas.items()}
    takers = [a for a in sorted(deficit) for _ in range(max(0, deficit[a]))]
    out = list(table)
    for i, new_primary in zip(sorted(moving), takers, strict=True):
        b = out[i]
        if b.inter_pop:
            out[i] = dataclasses.replace(b, primary=new_primary, modified_at=now)
        else:
            out[i] = Bucket(
                primary=new_primary,
                secondary=b.primary,
                modified_at=now,
            )
    return out


def expire_drains(table: Table, now: float, drain_period_s: float) -> Table:
    """Clear secondaries that have been draining (direction back) for the whole drain period."""
    out = table
    for i, b in enumerate(table):
        if b.secondary is not None and not b.away and now - b.modified_at >= drain_period_s:
            if out is table:
                out = list(table)
            out[i] = Bucket(primary=b.primary, modified_at=now)
    return out


def apply_policy(
    table: Table,
    shares: Mapping[str, float],
    peers: Mapping[str, Peer],
    now: float,
    drain_period_s: float,
) -> Table:
    """The table that meets ``shares`` (destination PoP -> fraction) with the fewest changes."""
    out = expire_drains(table, now, drain_period_s)
    if out is table:
        out = list(table)
    want = bucket_counts(shares, len(out))
    by_id = {p.id: p for p in peers.values()}
    active: dict[int, list[int]] = {}
    for i, b in enumerate(out):
        if b.inter_pop and b.away:
            active.setdefault(b.secondary_pop, []).append(i)
    # Shrink first, so that buckets freed by one destination are not the first taken by another.
    for pop_id, idx in active.items():
        peer = by_id.get(pop_id)
        excess = len(idx) - (want.get(peer.name, 0) if peer else 0)
        for i in _lrm(out, idx)[: max(0, excess)]:
            out[i] = dataclasses.replace(out[i], away=False, modified_at=now)
    for dest, count in sorted(want.items()):
        peer = peers[dest]
        missing = count - len(active.get(peer.id, []))
        if missing <= 0:
            continue

        def cost(i: int, pop_id: int = peer.id) -> tuple[int, float, int]:
            # Cheapest first: a bucket already draining to this PoP (its connections are there),
            # then one with no secondary, then an intra-PoP second chance, then another PoP's.
            b = out[i]
            rank = (
                0
                if b.inter_pop and b.secondary_pop == pop_id
                else 1
                if b.secondary is None
                else 2
                if not b.inter_pop
                else 3
            )
            return rank, b.modified_at, i

        free = [i for i, b in enumerate(out) if not b.away]
        for i in sorted(free, key=cost)[:missing]:
            out[i] = Bucket(
                primary=out[i].primary,
                secondary=peer.ingress,
                inter_pop=True,
                secondary_pop=peer.id,
                away=True,
                modified_at=now,
            )
    return out


def forwarded_counts(table: Table) -> dict[int, int]:
    """Buckets sending new connections away, per destination PoP id."""
    counts: dict[int, int] = {}
    for b in table:
        if b.inter_pop and b.away:
            counts[b.secondary_pop] = counts.get(b.secondary_pop, 0) + 1
    return counts


def changed_buckets(old: Table | None, new: Table) -> list[int]:
    """Indices of the buckets that differ; cheap because unchanged buckets are the same objects."""
    if old is None or len(old) != len(new):
        return list(range(len(new)))
    return [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a is not b and a != b]


def diff(old: Table | None, new: Table) -> dict[int, Bucket]:
    """Buckets that changed, with their new value: what a forwarder writes to its map."""
    return {i: new[i] for i in changed_buckets(old, new)}


def check_invariants(
    table: Table,
    *,
    bits: int,
    self_id: int,
    shares: Mapping[str, float],
    peers: Mapping[str, Peer],
    local_addresses: set[str],
    forwardable: bool = True,
    buckets: Sequence[int] | None = None,
) -> None:
    """Raise :class:`TableInvariantError` listing every rule ``table`` breaks.

    ``local_addresses`` are this PoP's server addresses (current and recently removed ones that
    may still be secondaries). ``buckets`` limits the per-bucket rules to those indices: the
    writer passes the changed ones, since the rest already passed when their table was written.
    The counts per destination are always checked over the whole table.
    """
    problems: list[str] = []
    size = 1 << bits
    if len(table) != size:
        problems.append(f"size {len(table)} != 2^{bits}")
    if not forwardable and any(x > 0.0 for x in shares.values()):
        problems.append("shares for a tier that may not be forwarded")
    by_id = {p.id: p for p in peers.values()}
    ingress = {p.ingress for p in peers.values()}
    counts = forwarded_counts(table)
    for dest, x in shares.items():
        if dest not in peers:
            problems.append(f"share to unknown PoP {dest!r}")
            continue
        got = counts.get(peers[dest].id, 0)
        if abs(got - x * size) > 1.0:
            problems.append(f"{dest}: {got} buckets for share {x:.6f} (want {x * size:.1f} +- 1)")
    wanted_ids = {peers[d].id for d, x in shares.items() if d in peers and x > 0.0}
    for pop_id, got in counts.items():
        if pop_id not in wanted_ids:
            problems.append(f"{got} buckets forward to PoP id {pop_id} without a share")
    for i in range(len(table)) if buckets is None else buckets:
        b = table[i]
        if b.primary not in local_addresses:
            problems.append(f"bucket {i}: primary {b.primary} is not a local server")
        if b.inter_pop:
            peer = by_id.get(b.secondary_pop)
            if b.secondary_pop == self_id:
                problems.append(f"bucket {i}: inter-PoP secondary is this PoP itself")
            elif peer is None:
                problems.append(f"bucket {i}: unknown secondary PoP id {b.secondary_pop}")
            elif b.secondary != peer.ingress:
                problems.append(f"bucket {i}: secondary {b.secondary} is not {peer.name}'s ingress")
        elif b.secondary is not None and (
            b.secondary in ingress or b.secondary not in local_addresses
        ):
            # An unflagged secondary would let received traffic leave the PoP again.
            problems.append(f"bucket {i}: intra-PoP secondary {b.secondary} is not a local server")
        if b.away and b.secondary is None:
            problems.append(f"bucket {i}: direction away without a secondary")
        if len(problems) > 50:
            break
    if problems:
        raise TableInvariantError(problems)
