"""Forwarder sync: keep one node's BPF table maps equal to its PoP's current tables in Redis.

Run: ``python -m services.forwarder.sync --pop a --node a-edge1 [--pin-dir DIR]``.

Why its own process: the XDP program forwards with whatever its pinned maps hold, so the control
loop that feeds them may crash, restart or lose Redis while packets keep flowing on the last good
table (fail static, docs/failure.md). Per tier, a table-updates.v1 notice (fast path) or the poll
of the ``current`` keys (fallback, works without Kafka) finds a version other than the one the
maps hold; its blob is fetched in one GET, turned into the exact bytes the map holds
(:func:`map_image`) and compared with what the maps hold; only the buckets that differ are
written, in batch syscalls. "What the maps hold" is what this process last wrote, or, after a
restart and every ``sync_reconcile_s``, what it reads back from the maps: the first apply of a
restarted sync is therefore a reconcile that writes only the buckets that differ.

Lease: a table is trusted for ``sync_lease_s`` after its header's ``written_at``; the table
writer renews it by writing the table again as a new version. A tier whose lease ran out is cut
back to local (:func:`local_image`): first every bucket's direction goes back, so new
connections stay in this PoP while every secondary is kept and established connections still
reach their server or PoP by second chance; after ``sync_lease_drain_s`` more the inter-PoP
secondaries go too, leaving plain anycast with intra-PoP second chance. A renewed table comes
back as it is. The cut runs whether or not Redis answers: a controller that is gone is the case
it is for.

The pure core (version tracking, images and diffs, leases, backoff, counters to messages) does
no I/O; the adapters (:class:`RedisTables`, :class:`LoaderMaps`, :class:`SyncService`) stay
thin.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import redis
from confluent_kafka import KafkaException
from opentelemetry import trace

from popshift import metrics, topics, tracing
from popshift import redis_client as popshift_redis
from popshift.bus import DeliveryFailed, Received, TypedConsumer, TypedProducer, create_topics
from popshift.network import NetworkConfig, load_network
from popshift.process import install_stop_signals, setup_logging
from schemas.bucket import Flag
from schemas.messages import MAX_TIERS, DataplaneStats, TableUpdate, TierCounters
from services.forwarder.layout import BUCKET_BITS, BUCKET_DTYPE, Verdict, addr16
from services.forwarder.loader import DEFAULT_PIN_ROOT, Count, Forwarder, Role, changed
from services.forwarder.node_config import (
    NodeFile,
    NodeFileError,
    apply_node,
    attach_node,
    read_node,
)
from services.forwarder.sync_settings import SyncSettings
from services.table_writer.codec import NO_ADDRESS, BadTableBlob, Header, decode_records
from services.table_writer.store import current_key, version_key

log = logging.getLogger("popshift.forwarder.sync")
_tracer = trace.get_tracer("popshift.forwarder.sync")

Image = npt.NDArray[Any]
"""A tier's buckets exactly as the BPF array holds them (dtype :data:`BUCKET_DTYPE`)."""
Counters = Mapping[int | None, Mapping[Verdict, Count]]

# --------------------------------------------------------------------------------------------
# Pure core: table blob -> map bytes, diffs, version tracking, backoff, counters -> messages.
# --------------------------------------------------------------------------------------------


class Refused(Exception):
    """A table version this node must not apply; the maps keep what they hold."""


def _addresses(header: Header) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(a) for a in header.addresses]
    except ValueError as exc:
        raise Refused(f"bad address in header: {exc}") from exc


def _check_flags(flags: npt.NDArray[np.uint8], has_secondary: npt.NDArray[np.bool_]) -> None:
    """The record's flags go to the map as they are, so only a bucket's own bits pass, and
    they must agree with the secondary (schemas/redis-table.md)."""
    h = has_secondary.view(np.uint8)
    optional = h * np.uint8(Flag.INTER_POP | Flag.AWAY)  # allowed only with a secondary
    required = np.uint8(Flag.VALID) | h * np.uint8(Flag.HAS_SECONDARY)
    bad = (flags & ~optional) != required
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise Refused(f"bucket {i}: flags 0x{int(flags[i]):02x} are not a bucket's")


def map_image(header: Header, records: npt.NDArray[Any]) -> Image:
    """The bytes the BPF array must hold for this table: vectorised, a few ms at N=16."""
    ips = _addresses(header)
    n_addr = len(ips)
    table = np.zeros((n_addr + 1, 16), dtype=np.uint8)  # the extra last row: no address
    for k, ip in enumerate(ips):
        table[k] = np.frombuffer(addr16(ip), np.uint8)
    primary = records["primary"].astype(np.intp)
    secondary = records["secondary"].astype(np.intp)
    has_secondary = secondary != NO_ADDRESS
    if primary.size and (
        primary.max() >= n_addr or secondary[has_secondary].max(initial=0) >= n_addr
    ):
        raise Refused(f"address index beyond the header's {n_addr} addresses")
    _check_flags(records["flags"], has_secondary)
    secondary[~has_secondary] = n_addr
    image = np.zeros(len(records), dtype=BUCKET_DTYPE)
    image["primary"] = table[primary]
    image["secondary"] = table[secondary]
    image["secondary_pop"] = records["secondary_pop"]
    image["flags"] = records["flags"]
    return image


class Lease(enum.IntEnum):
    """How much of its table a tier still follows; each stage keeps less of it."""

    LIVE = 0
    """Renewed within the lease: the table as written."""
    EXPIRED = 1
    """Direction back in every bucket; every secondary kept (second chance)."""
    LOCAL = 2
    """Also no inter-PoP secondary: plain anycast, intra-PoP second chance only."""


@dataclass(frozen=True)
class LeaseRule:
    lease_s: float
    """A table is followed this long after its written_at; 0 = for ever (no lease)."""
    drain_s: float
    """After expiry, inter-PoP secondaries are kept this much longer."""

    def stage(self, now: float, renewed_at: float) -> Lease:
        age = now - renewed_at
        if self.lease_s <= 0 or age <= self.lease_s:
            return Lease.LIVE
        return Lease.EXPIRED if age <= self.lease_s + self.drain_s else Lease.LOCAL


NO_LEASE = LeaseRule(0.0, 0.0)
_AWAY, _INTER, _HAS = np.uint8(Flag.AWAY), np.uint8(Flag.INTER_POP), np.uint8(Flag.HAS_SECONDARY)


def local_image(image: Image, stage: Lease) -> Image:
    """What is left of a table at a lease stage (the image itself when live)."""
    if stage is Lease.LIVE:
        return image
    out = image.copy()
    flags = out["flags"]
    flags &= ~_AWAY
    if stage is Lease.LOCAL:
        inter = (flags & _INTER) != 0
        out["secondary"][inter] = 0
        out["secondary_pop"][inter] = 0
        flags[inter] &= ~(_INTER | _HAS)
    out["flags"] = flags
    return out


@dataclass
class TierState:
    version: int = 0
    """The Redis version the maps hold (0: none known, e.g. just started)."""
    image: Image | None = None
    """What the maps hold, as last written or read back; None: read the maps before a diff."""
    refused: int = 0
    """The last version refused (bad blob, wrong size); not fetched again."""
    table: Image | None = None
    """The table the maps follow before any lease cut (None: what the maps hold)."""
    renewed_at: float = 0.0
    """written_at of the version held, or when this process began to follow the tier."""
    lease: Lease = Lease.LIVE
    """The lease stage the maps hold."""

    def reset(self) -> TierState:
        """Forget the maps and the version; keep what is refused and how old the lease is."""
        return TierState(refused=self.refused, renewed_at=self.renewed_at, lease=self.lease)


@dataclass
class SyncState:
    """What one node knows of its maps and of Redis; rebuilt from both after a restart."""

    pop: str
    bits: int
    tiers: dict[int, TierState]
    applied: int = 0
    buckets_written: int = 0
    refused: int = 0
    notices: int = 0
    redis_failures: int = 0
    map_failures: int = 0
    lease_expiries: int = 0
    """Times a tier's lease ran out (live -> expired); each is logged as an error."""


def new_state(pop: str, bits: int, tiers: int, now: float = 0.0) -> SyncState:
    """A fresh process grants the maps one lease from ``now``, whatever they hold."""
    return SyncState(pop=pop, bits=bits, tiers={t: TierState(renewed_at=now) for t in range(tiers)})


def on_notice(state: SyncState, update: TableUpdate) -> bool:
    """True when a notice announces a version newer than the maps hold: read Redis now."""
    if update.pop != state.pop or update.tier not in state.tiers:
        return False
    state.notices += 1
    tier = state.tiers[update.tier]
    return update.version > tier.version and update.version != tier.refused


def to_fetch(state: SyncState, currents: Mapping[int, int]) -> list[int]:
    """Tiers whose current version differs from what the maps hold.

    A lower version is followed too (Redis lost its data and a writer started again); no
    table at all (0) leaves the maps as they are: the last good table keeps forwarding.
    """
    out = []
    for tier, version in sorted(currents.items()):
        t = state.tiers.get(tier)
        if t is not None and version > 0 and version not in (t.version, t.refused):
            out.append(tier)
    return out


@dataclass(frozen=True)
class Plan:
    """One tier's new version and the buckets to write to reach it."""

    tier: int
    version: int
    header: Header
    records: npt.NDArray[Any]
    table: Image
    """The version as written."""
    lease: Lease
    image: Image
    """What the maps must hold: the table, cut to its lease stage."""
    indices: npt.NDArray[np.intp]


def plan(
    state: SyncState,
    tier: int,
    version: int,
    blob: bytes,
    held: Image,
    now: float = 0.0,
    rule: LeaseRule = NO_LEASE,
) -> Plan:
    """Decode, check and diff one fetched version; raises :class:`Refused` (and remembers it)."""
    try:
        try:
            header, records = decode_records(blob)
        except BadTableBlob as exc:
            raise Refused(str(exc)) from exc
        if (header.pop, header.tier, header.version) != (state.pop, tier, version):
            raise Refused(
                f"blob is {header.pop}/{header.tier}/v{header.version}, "
                f"wanted {state.pop}/{tier}/v{version}"
            )
        if header.bits != state.bits:
            raise Refused(f"table has 2^{header.bits} buckets, the maps 2^{state.bits}")
        table = map_image(header, records)
    except Refused:
        state.tiers[tier].refused = version
        state.refused += 1
        raise
    stage = rule.stage(now, header.written_at)
    image = local_image(table, stage)
    return Plan(tier, version, header, records, table, stage, image, changed(held, image))


def commit(state: SyncState, p: Plan) -> None:
    """The maps now hold ``p``'s version (cut to its lease stage)."""
    t = state.tiers[p.tier]
    if p.lease > t.lease == Lease.LIVE:
        state.lease_expiries += 1
    t.version, t.image, t.table = p.version, p.image, p.table
    t.renewed_at, t.lease = p.header.written_at, p.lease
    state.applied += 1
    state.buckets_written += len(p.indices)


def lease_due(state: SyncState, now: float, rule: LeaseRule) -> dict[int, Lease]:
    """Tiers whose lease stage differs from what their maps hold, with the stage due."""
    due = {tier: rule.stage(now, t.renewed_at) for tier, t in state.tiers.items()}
    return {tier: stage for tier, stage in due.items() if stage != state.tiers[tier].lease}


def cut(t: TierState, stage: Lease, held: Image) -> tuple[Image, Image]:
    """(table, image): what a tier's maps must hold at a lease stage, and the table it is cut
    from. Without a known table, the maps' own content is the table (a cut of a cut is the
    deeper cut, so that is exact)."""
    table = t.table if t.table is not None else held
    return table, local_image(table, stage)


def commit_cut(
    state: SyncState, tier: int, stage: Lease, table: Image, image: Image, written: int
) -> bool:
    """The maps now hold ``image``, ``table`` cut to ``stage`` by writing ``written`` buckets.

    True when this is a lease expiry (counted): the tier followed a Redis table, or the cut
    changed its maps. A tier no writer ever wrote, whose maps the cut leaves as they are, is
    not one.
    """
    t = state.tiers[tier]
    expiry = stage > t.lease == Lease.LIVE and bool(t.version or written)
    state.lease_expiries += expiry
    t.table, t.image, t.lease = table, image, stage
    return expiry


def lost(state: SyncState, tier: int) -> None:
    """A map write failed part-way: what the maps hold is unknown until read back."""
    state.tiers[tier] = state.tiers[tier].reset()
    state.map_failures += 1


def forget(state: SyncState) -> None:
    """Read back every tier's maps and Redis table on the next round (periodic reconcile)."""
    for tier, t in state.tiers.items():
        state.tiers[tier] = t.reset()


@dataclass
class Backoff:
    """Exponential wait between attempts at a dependency that is down."""

    initial_s: float
    max_s: float
    failures: int = 0
    next_at: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float) -> float:
        delay = min(self.max_s, self.initial_s * 2.0 ** min(self.failures, 32))
        self.failures += 1
        self.next_at = now + delay
        return delay

    def succeeded(self) -> int:
        """Reset; returns how many failures in a row came before."""
        failures, self.failures, self.next_at = self.failures, 0, 0.0
        return failures


LOCAL = (Verdict.LOCAL, Verdict.LOCAL_HOPS_EXHAUSTED, Verdict.LOCAL_SELF_SECONDARY)
DROPPED = (*(v for v in Verdict if v.name.startswith("DROP_")), Verdict.TOO_BIG_ICMP)


def tier_counters(tier: int, counts: Mapping[Verdict, Count]) -> TierCounters:
    """One counter row as the message: processed here (local), forwarded, received, dropped.

    Summed over all nodes of a PoP (edges and servers), every packet is counted once in exactly
    one of ``local`` (our own traffic processed here), ``inter_pop_forward`` +
    ``second_chance_forward`` (our own traffic sent to another PoP) and ``received_from_peer``
    (another PoP's traffic processed here): an edge hands every packet to a local server
    (``intra_pop_forward``, also received traffic: the server counts that one, FROM_PEER), and
    a hop between two servers of the PoP (``intra_pop_forward``, including second chances to an
    intra-PoP secondary) is counted as local or received by the server it lands on. The
    policy engine's native-demand estimate relies on this (policy_engine/model.py).

    PASS_* verdicts (the kernel stack decides) are not reported.
    """

    def packets(*verdicts: Verdict) -> int:
        return sum(counts[v].packets for v in verdicts if v in counts)

    return TierCounters(
        tier=tier,
        local=packets(*LOCAL),
        intra_pop_forward=packets(Verdict.FWD_INTRA, Verdict.SECOND_CHANCE),
        inter_pop_forward=packets(Verdict.FWD_INTER),
        second_chance_forward=packets(Verdict.SECOND_CHANCE_INTER),
        received_from_peer=packets(Verdict.RECEIVED_PEER),
        dropped={v.name.lower(): packets(v) for v in DROPPED},
    )


def dataplane_stats(pop: str, node: str, at: float, counters: Counters) -> DataplaneStats:
    """dataplane-stats.v1 from read_counters().

    Packets the program could not assign a tier (bad frames, blocklisted sources) are
    reported under the tier id the C side uses for them, NO_TIER = the number of tiers, when
    the message has room for it; their forwarding counts are always 0.
    """
    tiers = sorted(t for t in counters if t is not None)
    rows = [tier_counters(t, counters[t]) for t in tiers]
    no_tier = (max(tiers) + 1) if tiers else 0
    if None in counters and no_tier < MAX_TIERS and len(rows) < MAX_TIERS:
        rows.append(tier_counters(no_tier, counters[None]))
    return DataplaneStats(pop=pop, node=node, at=at, tiers=rows)


# --------------------------------------------------------------------------------------------
# Adapters: Redis, BPF maps, Kafka, and the loop.
# --------------------------------------------------------------------------------------------


class TableMaps(Protocol):
    """The BPF side the sync needs: the table geometry, writes, read-back and counters."""

    buckets: int
    tiers: int

    def write(self, tier: int, indices: npt.NDArray[np.intp], rows: Image) -> None: ...

    def read(self, tier: int) -> Image: ...

    def counters(self) -> Counters: ...


class LoaderMaps:
    """:class:`TableMaps` on a pinned program, through the forwarder's loader."""

    def __init__(self, fwd: Forwarder, batch_size: int = 16384) -> None:
        self.fwd = fwd
        self.buckets = fwd.buckets
        self.tiers = fwd.tiers
        self.batch_size = batch_size

    def write(self, tier: int, indices: npt.NDArray[np.intp], rows: Image) -> None:
        """The map's own bytes straight from numpy, in BPF_MAP_UPDATE_BATCH calls; packets see
        the whole version or none of it (a table swap)."""
        self.fwd.write_buckets(tier, indices, rows, self.batch_size)

    def read(self, tier: int) -> Image:
        return self.fwd.read_table(tier)

    def counters(self) -> Counters:
        return self.fwd.read_counters()


class RedisTables:
    """Reads the table writer's keys (store.py's layout): all tiers' pointers in one MGET."""

    def __init__(self, client: redis.Redis[bytes], pop: str, prefix: str) -> None:
        self.client = client
        self.pop = pop
        self.prefix = prefix

    def currents(self, tiers: Sequence[int]) -> dict[int, int]:
        raw = self.client.mget([current_key(self.pop, t, self.prefix) for t in tiers])
        return {t: int(v) if v is not None else 0 for t, v in zip(tiers, raw, strict=True)}

    def blob(self, tier: int, version: int) -> bytes | None:
        raw = self.client.get(version_key(self.pop, tier, version, self.prefix))
        return None if raw is None else bytes(raw)


class SyncService:
    """The loop: notices and polls in, map writes and stats out. Every I/O object is injected."""

    def __init__(
        self,
        settings: SyncSettings,
        maps: TableMaps,
        client: redis.Redis[bytes],
        *,
        pop: str,
        node: str,
        consumer: TypedConsumer | None = None,
        producer: TypedProducer | None = None,
        clock: Callable[[], float] = time.time,
        on_reconcile: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.maps = maps
        self.node = node
        self.tables = RedisTables(client, pop, settings.table_key_prefix)
        bits = maps.buckets.bit_length() - 1
        self.state = new_state(pop, bits, maps.tiers, clock())
        self.rule = LeaseRule(settings.sync_lease_s, settings.sync_lease_drain_s)
        self.backoff = Backoff(settings.sync_backoff_initial_s, settings.sync_backoff_max_s)
        self.consumer = consumer
        self.producer = producer
        self.stats_topic = settings.topic(topics.DATAPLANE_STATS)
        self.clock = clock
        self.timings: dict[str, float] = {}
        """Seconds spent in each part of the last apply (the benchmark reads them)."""
        self.published = 0
        self.on_reconcile = on_reconcile
        """Called on every reconcile, before the maps are read back (the node file)."""
        self._check_now = True
        self._next_reconcile = clock() + settings.sync_reconcile_s
        # per tier, the span of the latest table-updates.v1 notice: the map write is its child
        self._notices: dict[int, tuple[int, trace.SpanContext]] = {}  # tier -> (version, span)

    @property
    def pop(self) -> str:
        return self.state.pop

    def handle(self, received: Received) -> None:
        if isinstance(received.value, TableUpdate) and on_notice(self.state, received.value):
            self._check_now = True
            if (here := tracing.here()) is not None:
                self._notices[received.value.tier] = (received.value.version, here)

    def sync(self) -> int:
        """Bring every tier to Redis's current version, then hold every lease; returns how
        many versions were applied.

        A Redis error leaves the maps as they are and backs off; a refused table is logged and
        kept out; a failed map write is read back and reconciled on the next round. Leases
        are held whether Redis answers or not.
        """
        now = self.clock()
        self._check_now = False
        if now >= self._next_reconcile:
            if self.on_reconcile is not None:
                self.on_reconcile()
            forget(self.state)
            self._next_reconcile = now + self.settings.sync_reconcile_s
        applied = self._follow_redis() if self.backoff.ready(now) else 0
        self._hold_leases()
        return applied

    def _held(self, tier: int) -> Image | None:
        """What the tier's maps hold: as last written, else read back (None: the read failed,
        logged and counted; nothing was written)."""
        held = self.state.tiers[tier].image
        if held is not None:
            return held
        try:
            return self.maps.read(tier)
        except OSError as exc:  # BpfError
            self.state.map_failures += 1
            log.error("%s tier %d: map read-back failed, will retry: %s", self.pop, tier, exc)
            return None

    def _hold_leases(self) -> None:
        """Cut the tiers whose lease ran out back to local, loudly."""
        for tier, stage in lease_due(self.state, self.clock(), self.rule).items():
            held = self._held(tier)
            if held is None:
                continue
            t = self.state.tiers[tier]
            table, image = cut(t, stage, held)
            idx = changed(held, image)
            try:
                self.maps.write(tier, idx, image[idx])
            except OSError as exc:
                lost(self.state, tier)
                log.error("%s tier %d: map write failed, will read back: %s", self.pop, tier, exc)
                continue
            commit_cut(self.state, tier, stage, table, image, len(idx))
            metrics.LEASE_EXPIRIES.labels("sync").inc()
            log.log(
                logging.ERROR if t.version or len(idx) else logging.INFO,
                "%s tier %d: LEASE %s: v%d written at %.0f, not renewed for %.0f s (lease %.0f s)"
                " -> %s; %d buckets written (%d lease expiries so far)",
                self.pop,
                tier,
                stage.name,
                t.version,
                t.renewed_at,
                self.clock() - t.renewed_at,
                self.rule.lease_s,
                "direction back everywhere, secondaries kept"
                if stage is Lease.EXPIRED
                else "inter-PoP secondaries cleared too (local)",
                len(idx),
                self.state.lease_expiries,
            )

    def _follow_redis(self) -> int:
        applied = 0
        try:
            currents = self.tables.currents(sorted(self.state.tiers))
            for tier in to_fetch(self.state, currents):
                applied += self._apply(tier, currents[tier])
        except redis.RedisError as exc:
            self.state.redis_failures += 1
            metrics.REDIS_CONNECTED.set(0)
            delay = self.backoff.failed(self.clock())
            log.warning(
                "%s: Redis unreachable (failure %d), keeping the maps, retry in %.1fs: %s",
                self.pop,
                self.backoff.failures,
                delay,
                exc,
            )
            return applied
        metrics.REDIS_CONNECTED.set(1)
        failures = self.backoff.succeeded()
        if failures:
            log.info("%s: Redis back after %d failed attempts", self.pop, failures)
        return applied

    def _apply(self, tier: int, version: int) -> int:
        t0 = time.perf_counter()
        blob = self.tables.blob(tier, version)
        if blob is None:
            return 0  # replaced (and expired) since the pointer was read: the next round
        t1 = time.perf_counter()
        reconcile = self.state.tiers[tier].image is None
        held = self._held(tier)
        if held is None:
            return 0
        t2 = time.perf_counter()
        was = self.state.tiers[tier].lease
        try:
            p = plan(self.state, tier, version, blob, held, self.clock(), self.rule)
        except Refused as exc:
            log.error("%s tier %d v%d REFUSED, keeping the maps: %s", self.pop, tier, version, exc)
            return 0
        t3 = time.perf_counter()
        told = self._notices.get(tier)
        # the notice of this very version (Redis's poll may have found it first: then none)
        parent, links = tracing.made_of([told[1] if told and told[0] == version else None])
        span = _tracer.start_span(
            f"bpf map write {self.node} t{tier}",
            context=parent,
            links=links,
            attributes={"popshift.version": version, "popshift.buckets": len(p.indices)},
        )
        try:
            with trace.use_span(span, end_on_exit=True):
                self.maps.write(tier, p.indices, p.image[p.indices])
        except OSError as exc:  # BpfError: what the maps hold is now unknown
            lost(self.state, tier)
            log.error("%s tier %d: map write failed, will read back: %s", self.pop, tier, exc)
            return 0
        t4 = time.perf_counter()
        commit(self.state, p)
        self.timings = {
            "redis_read_s": t1 - t0,
            "map_read_s": t2 - t1,
            "decode_diff_s": t3 - t2,
            "map_write_s": t4 - t3,
        }
        log.info(
            "%s tier %d: v%d %s, %d buckets written in %.1f ms",
            self.pop,
            tier,
            version,
            "reconciled" if reconcile else "applied",
            len(p.indices),
            (t4 - t0) * 1000.0,
        )
        if p.lease != was:
            log.log(
                logging.WARNING if p.lease is Lease.LIVE else logging.ERROR,
                "%s tier %d: v%d written at %.0f: lease %s",
                self.pop,
                tier,
                version,
                p.header.written_at,
                "renewed, the table is followed again" if p.lease is Lease.LIVE else p.lease.name,
            )
        return 1

    def publish_stats(self) -> DataplaneStats | None:
        """Counters to dataplane-stats.v1; never blocks on Kafka (the client queues)."""
        try:
            counters = self.maps.counters()
        except OSError as exc:
            log.error("%s: reading counters failed: %s", self.pop, exc)
            return None
        stats = dataplane_stats(self.pop, self.node, self.clock(), counters)
        for tier, counts in counters.items():
            label = "none" if tier is None else str(tier)
            for verdict, count in counts.items():
                metrics.DATAPLANE_PACKETS.labels(self.node, label, verdict.name.lower()).set(
                    count.packets
                )
        if self.producer is not None:
            self.producer.send(self.stats_topic, self.pop, stats)
            self.producer.poll(0)
            self.published += 1
        return stats

    def run(self, stop: threading.Event) -> None:
        poll_s = self.settings.sync_poll_s
        stats_s = self.settings.sync_stats_interval_s
        next_poll = next_stats = self.clock()
        while not stop.is_set():
            now = self.clock()
            if self._check_now or now >= next_poll:
                self.sync()
                next_poll = max(next_poll + poll_s, self.clock())
            if now >= next_stats:
                self.publish_stats()
                next_stats = max(next_stats + stats_s, self.clock())
            wait = max(0.0, min(next_poll, next_stats, self.backoff.next_at or next_poll) - now)
            wait = min(wait, 0.1)
            if self.consumer is None:
                stop.wait(wait)
                continue
            try:
                self.consumer.poll_batch(self.handle, timeout=wait, max_messages=1)
            except KafkaException as exc:  # the poll keeps the tables moving meanwhile
                log.warning("%s: Kafka: %s", self.pop, exc)
                stop.wait(wait)

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(KafkaException):
                self.consumer.close()
        if self.producer is not None:
            try:
                self.producer.flush(5.0)
            except DeliveryFailed as exc:  # stats are periodic: the next node start sends more
                log.warning("%s: stats not delivered: %s", self.pop, exc)


def parse_args(argv: Sequence[str] | None) -> SyncSettings:
    parser = argparse.ArgumentParser(description="Feed one node's BPF maps from Redis tables.")
    parser.add_argument("--pop", help="this node's PoP (POPSHIFT_SYNC_POP)")
    parser.add_argument("--node", help="this node's name (POPSHIFT_SYNC_NODE)")
    parser.add_argument("--pin-dir", help="bpffs pin directory (POPSHIFT_SYNC_PIN_DIR)")
    parser.add_argument(
        "--node-file",
        help="the node's YAML (deploy/config/node-example.yaml): configure the maps and attach "
        "XDP at start and on every reconcile (POPSHIFT_SYNC_NODE_FILE)",
    )
    args = parser.parse_args(argv)
    given = {
        "sync_pop": args.pop,
        "sync_node": args.node,
        "sync_pin_dir": args.pin_dir,
        "sync_node_file": args.node_file,
    }
    return SyncSettings(**{k: v for k, v in given.items() if v is not None})


def with_node(settings: SyncSettings, node: NodeFile) -> SyncSettings:
    """The node file names the PoP, the node and the role; a flag that says otherwise is an
    error, not a silent override."""
    for field, value in (("sync_pop", node.pop), ("sync_node", node.node)):
        given = getattr(settings, field)
        if given is not None and given != value:
            raise NodeFileError(f"--{field[5:]} {given!r} contradicts the node file's {value!r}")
    return settings.model_copy(
        update={"sync_pop": node.pop, "sync_node": node.node, "sync_role": node.role}
    )


class NodeKeeper:
    """Applies the node file at start and on every reconcile; the last good file stays."""

    def __init__(self, path: Path, network: NetworkConfig, fwd: Forwarder) -> None:
        self.path = path
        self.network = network
        self.fwd = fwd
        self.node, self.plan = read_node(path, network)

    def start(self) -> None:
        booted = apply_node(self.fwd, self.plan)
        mode = attach_node(self.fwd, self.node)
        log.info(
            "node %s/%s (%s): maps configured from %s, XDP on %s%s: %s%s",
            self.node.pop,
            self.node.node,
            self.node.role,
            self.path,
            self.node.interface,
            f" in netns {self.node.netns}" if self.node.netns else "",
            mode,
            f"; bootstrap table in tiers {booted}" if booted else "",
        )

    def reconcile(self) -> None:
        try:
            node, plan = read_node(self.path, self.network)
            if node.identity != self.node.identity:
                raise NodeFileError(
                    f"{self.path}: role, pop, node, interface or netns changed: restart the sync"
                )
            self.node, self.plan = node, plan
            self.start()
        except (NodeFileError, OSError) as exc:
            log.error("node file NOT applied, keeping the last good one: %s", exc)


def redis_client(settings: SyncSettings) -> redis.Redis[bytes]:
    """Short timeouts and no client-side retries: redis-py's default retries a dead server
    with backoff for seconds inside one call, while the loop has its own backoff and stats to
    publish meanwhile. Reads a replica when one is set (the table writer writes the primary)."""
    access = settings.redis()
    if settings.sync_redis_url is not None:
        access = dataclasses.replace(access, url=settings.sync_redis_url)
    return popshift_redis.connect(access, settings.sync_redis_timeout_s)


def open_maps(settings: SyncSettings) -> Forwarder:
    """Adopt the node's pinned program (or load and pin one with the configured table size)."""
    bits = settings.table_bits
    defines = None if bits == BUCKET_BITS else {"BUCKET_BITS": bits}
    return Forwarder.open(
        Role(settings.sync_role),
        settings.program,
        pin_root=Path(settings.sync_pin_dir or DEFAULT_PIN_ROOT),
        defines=defines,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.forwarder.sync``."""
    setup_logging()
    # Before anything slow (loading, attaching, Kafka): a SIGTERM during start-up is a clean stop.
    stop = threading.Event()
    install_stop_signals(stop)
    settings = parse_args(argv)
    keeper: NodeKeeper | None = None
    if settings.sync_node_file:
        try:
            path = Path(settings.sync_node_file)
            network = load_network(settings.network_file)
            settings = with_node(settings, read_node(path, network)[0])
        except NodeFileError as exc:
            log.error("node file refused: %s", exc)
            return 2
    pop, node = settings.sync_pop, settings.sync_node
    if not pop or not node:
        log.error("which PoP and node? pass --pop and --node (or POPSHIFT_SYNC_POP/NODE)")
        return 2
    settings.start_telemetry()
    fwd = open_maps(settings)
    if settings.sync_node_file:
        try:
            keeper = NodeKeeper(Path(settings.sync_node_file), network, fwd)
            keeper.start()
        except (NodeFileError, OSError) as exc:
            log.error("node file not applied: %s", exc)
            fwd.close()
            return 2
    client = redis_client(settings)
    consumer = producer = None
    if settings.sync_kafka:
        updates = settings.topic(topics.TABLE_UPDATES)
        try:
            create_topics(
                settings.kafka(),
                [updates, settings.topic(topics.DATAPLANE_STATS)],
                settings.topic_partitions,
                timeout=5.0,
            )
        except KafkaException as exc:
            log.warning("Kafka not reachable (%s): polling Redis until it is", exc)
        producer = TypedProducer(settings.kafka())
        consumer = TypedConsumer(
            settings.kafka(),
            f"{settings.sync_group_prefix}-{pop}:{node}",  # ':' ends the PoP (popshift/access.py)
            [updates],
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=producer,
            # Redis is read in full at start, so notices from before it are not needed.
            extra_config={"auto.offset.reset": "latest"},
        )
    service = SyncService(
        settings,
        LoaderMaps(fwd, settings.sync_batch_size),
        client,
        pop=pop,
        node=node,
        consumer=consumer,
        producer=producer,
        on_reconcile=keeper.reconcile if keeper else None,
    )
    log.info(
        "sync %s/%s: maps of %s (%d tiers x %d buckets, %s)",
        pop,
        node,
        fwd.pin_dir,
        fwd.tiers,
        fwd.buckets,
        "adopted" if fwd.adopted else "loaded",
    )
    try:
        service.run(stop)
    finally:
        service.close()
        fwd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
