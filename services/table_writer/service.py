"""One PoP's table writer as a process: policies.v1 and pop-load.v1 in, Redis tables out.

Run: ``POPSHIFT_TABLE_POP=a python -m services.table_writer.service``. On start it adopts the
tables already in Redis and replays its own PoP's latest policy from the compacted topic, so a
restart converges to the same tables.

Redis failures: every table the state machine produces becomes the state's table at once and
waits, the latest per tier, until Redis takes it; each tick (and each new message) tries again
with the same content, so a server change whose write failed is applied when Redis returns
(later steps build on it rather than on the table Redis last took). The forwarders keep their
last good table meanwhile. Each tick also reads every tier's ``current`` version: a Redis that
came back empty (or older than this writer) gets every tier's table rewritten at once, as our
version + 1. A table in Redis this code cannot read (an older blob format) is logged and
written afresh above its version. table-updates.v1 notices wait in an :class:`Outbox` and are
sent again if Kafka lost them.

One writer per PoP: a process writes only while it holds the PoP's writer lock
(popshift/leadership.py), renewed every tick and checked by every table write in the same Redis
script. A second writer waits for the lock; one that loses it (its lock expired while it was
paused, or taken after a Redis wipe) stops, and waits again as the standby.

Inputs checked against the network (popshift/admission.py, in writer.py): a server list or a
policy the network description does not allow is dead-lettered with its reason and changes no
table. A policy's epoch is checked against the engines' lock's epoch, read from Redis
('<POPSHIFT_POLICY_LEADER_KEY>:epoch') for every policy of this PoP. While that key cannot be
read (Redis away, or back empty until an engine takes the lock again) policies are applied
unchecked for it, as before this check: a Redis outage must not freeze the PoP's policy, and a
forged future epoch then still meets the (epoch, version) order and the lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis
from confluent_kafka import KafkaException
from opentelemetry import trace

from popshift import metrics, redis_client, topics, tracing
from popshift.admission import Refused
from popshift.bus import (
    Bus,
    DeliveryFailed,
    KafkaBus,
    Outbox,
    Received,
    RejectMessage,
    create_topics,
)
from popshift.leadership import Leadership, read_epoch, wait_for_lock
from popshift.network import NetworkConfig, load_network
from popshift.process import install_stop_signals, run_ticking, setup_logging, until_ready
from schemas.messages import PolicyEvent, PopLoad, TableUpdate
from services.table_writer.codec import BadTableBlob, Header
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import Fenced, StaleVersion, TableStore, writer_lock_key
from services.table_writer.table import Table, TableInvariantError, forwarded_counts
from services.table_writer.writer import (
    PolicyRejected,
    Write,
    adopt,
    commit,
    new_state,
    on_heard,
    on_policy,
    on_servers,
    on_tick,
)

log = logging.getLogger("popshift.table_writer")
_tracer = trace.get_tracer("popshift.table_writer")


class Tables(Protocol):
    """Where the versioned tables live: :class:`TableStore` (Redis), or a dict in tests."""

    def read(self, pop: str, tier: int) -> tuple[Header, Table] | None:
        """Raises BadTableBlob for a table it cannot decode."""
        ...

    def current_version(self, pop: str, tier: int) -> int:
        """0 when the tier has no table."""
        ...

    def write(self, table: Table, header: Header) -> None:
        """Raises StaleVersion if the store holds ``header.version`` or newer already."""
        ...


class Deposed(Exception):
    """This writer lost its PoP's lock: another writer now owns the tables."""


class TableWriterService:
    def __init__(
        self,
        settings: TableWriterSettings,
        network: NetworkConfig,
        pop: str,
        store: Tables,
        bus: Bus,
        *,
        leadership: Leadership | None = None,
        engine_epoch: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``engine_epoch``: the engines' current epoch, None when not known (not checked)."""
        self.settings = settings
        self.leadership = leadership
        self.engine_epoch = engine_epoch
        self.epoch_unknown = 0  # policies applied without an epoch to check them against
        self.pop = pop
        self.clock = clock
        self.state = new_state(
            network,
            pop,
            settings.table_bits,
            settings.table_drain_period_s,
            silence=settings.bus_silence(),
        )
        self.store = store
        self.updates = settings.topic(topics.TABLE_UPDATES)
        self.producer = bus.producer()
        self.outbox = Outbox(self.producer, flush_timeout_s=min(1.0, settings.table_tick_s))
        self.written = 0
        self.refused = 0
        self.write_failures = 0
        self.rewrites = 0  # tiers rewritten because Redis had lost them
        self._pending: dict[int, Write] = {}  # per tier: the state's table, not yet in Redis
        self._causes: dict[int, trace.SpanContext] = {}  # per tier: what the write came of
        self._adopt_from_redis()
        policies = settings.topic(topics.POLICIES)
        for event in bus.replay(policies, key=pop):
            with contextlib.suppress(RejectMessage):  # logged; the live consumer dead-letters
                self._guarded(functools.partial(self._on_policy, event))
        self.consumer = bus.consumer(
            f"{settings.table_group_prefix}-{pop}",
            [policies, settings.topic(topics.POP_LOAD)],
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=self.producer,
        )

    def _adopt_from_redis(self) -> None:
        for tier in self.state.forwardable:
            self._adopt_tier(tier)

    def _adopt_tier(self, tier: int) -> bool:
        """Take the tier's table from Redis; False if there is none this writer can use."""
        try:
            found = self.store.read(self.pop, tier)
        except BadTableBlob as exc:
            log.error(
                "%s tier %d: unreadable table in Redis, writing afresh: %s", self.pop, tier, exc
            )
            return False
        if found is None:
            return False
        header, table = found
        if header.bits != self.state.bits:
            log.warning("tier %d: table in Redis has 2^%d buckets, rebuilding", tier, header.bits)
            return False
        try:
            adopt(self.state, tier, table, header.version, header.policy_version, header.shares)
        except Refused as exc:
            log.error("%s tier %d: table in Redis refused, writing afresh: %s", self.pop, tier, exc)
            return False
        self._pending.pop(tier, None)
        return True

    def _guarded(self, step: Callable[[], list[Write]]) -> None:
        """Run a state step and write its tables; refuse loudly what breaks an invariant."""
        try:
            writes = step()
        except TableInvariantError as exc:
            self.refused += 1
            log.error("%s: TABLE REFUSED, keeping the last good one: %s", self.pop, exc)
            raise RejectMessage(str(exc)) from exc
        except PolicyRejected as exc:
            log.error("%s: policy rejected: %s", self.pop, exc)
            raise RejectMessage(f"rejected: {exc}") from exc
        except Refused as exc:  # its kind first: the bus counts dead letters per kind
            log.error("%s: REFUSED, not allowed by the network description: %s", self.pop, exc)
            raise RejectMessage(str(exc)) from exc
        self._write(writes)

    def _on_policy(self, event: PolicyEvent) -> list[Write]:
        current = self.engine_epoch()
        if current is None:
            self.epoch_unknown += 1
            if self.epoch_unknown <= 3 or self.epoch_unknown % 60 == 0:
                log.warning(
                    "%s: the engines' epoch cannot be read: v%d (epoch %d) not checked for it"
                    " (%d so far)",
                    self.pop,
                    event.version,
                    event.epoch,
                    self.epoch_unknown,
                )
        return on_policy(self.state, event, self.clock(), current)

    def _write(self, writes: list[Write]) -> None:
        """Make each write the state's table and store it (now, or on a later attempt)."""
        cause = tracing.here()  # the policy or pop-load being handled (None on a tick)
        for w in writes:
            commit(self.state, w)
            self._pending[w.tier] = w
            if cause is not None:
                self._causes[w.tier] = cause
        self._flush_pending()

    def _flush_pending(self) -> None:
        """Store every tier's waiting table, oldest tier first; stop at the first Redis error."""
        for tier in sorted(self._pending):
            w = self._pending[tier]
            now = self.clock()
            header = Header(
                pop=self.pop,
                tier=w.tier,
                version=w.version,
                policy_version=w.policy_version,
                bits=self.state.bits,
                written_at=now,
                shares=w.shares,
            )
            parent, links = tracing.made_of([self._causes.get(tier)])
            span = _tracer.start_span(
                f"table write {self.pop} t{w.tier}",
                context=parent,
                links=links,
                attributes={"popshift.version": w.version, "popshift.changed": len(w.changed)},
            )
            try:
                with metrics.TABLE_APPLY_SECONDS.time(), trace.use_span(span, end_on_exit=True):
                    self.store.write(w.table, header)
                metrics.REDIS_CONNECTED.set(1)
            except StaleVersion as exc:
                log.error("%s tier %d: %s; re-reading Redis", self.pop, w.tier, exc)
                try:
                    if self._adopt_tier(tier):
                        continue  # another writer's newer table: ours gives way, as it did
                    above = self.store.current_version(self.pop, tier)
                except redis.RedisError as err:
                    self._redis_failed(tier, err)
                    break
                self._bump(tier, above + 1)
                continue  # written on the next attempt
            except Fenced as exc:
                raise Deposed(str(exc)) from exc
            except redis.RedisError as exc:
                self._redis_failed(tier, exc)
                break
            del self._pending[tier]
            current = self.state.tables.get(tier)
            if current is not None and current.version == w.version:
                current.written_at = now  # the lease runs from the write that landed
            self.written += 1
            update = TableUpdate(
                pop=self.pop,
                tier=w.tier,
                version=w.version,
                policy_version=w.policy_version,
                buckets_changed=len(w.changed),
                written_at=now,
                buckets=len(w.table),
                buckets_away=self._away(w.table),
            )
            self._causes.pop(tier, None)
            # the notice is the table write's child, a sync's map write the notice's in turn
            self.outbox.send(
                self.updates, self.pop, update, slot=f"{self.pop}:{w.tier}",
                made_of=[span.get_span_context()],
            )  # fmt: skip
        self.outbox.flush()

    def _away(self, table: Table) -> dict[str, int]:
        """Buckets sent to each peer, by name (what the console shows per destination)."""
        names = {peer.id: name for name, peer in self.state.peers.items()}
        return {names.get(i, str(i)): n for i, n in sorted(forwarded_counts(table).items())}

    def _bump(self, tier: int, version: int) -> None:
        """The waiting table of ``tier`` as ``version`` (Redis holds a higher one we cannot use)."""
        w = dataclasses.replace(self._pending[tier], version=version)
        self._pending[tier] = w
        current = self.state.tables.get(tier)
        if current is not None:
            current.version = version

    def _redis_failed(self, tier: int, exc: Exception) -> None:
        self.write_failures += 1
        metrics.REDIS_CONNECTED.set(0)
        if self.write_failures <= 10 or self.write_failures % 60 == 0:
            log.warning(
                "%s tier %d: Redis write failed (%d so far), keeping %d tables to write: %s",
                self.pop,
                tier,
                self.write_failures,
                len(self._pending),
                exc,
            )

    def _check_redis(self) -> None:
        """A Redis that lost our tables (restarted empty, or older): rewrite each tier now."""
        for tier, current in sorted(self.state.tables.items()):
            if tier in self._pending:
                continue
            try:
                stored = self.store.current_version(self.pop, tier)
            except redis.RedisError as exc:
                self._redis_failed(tier, exc)
                return
            if stored >= current.version:
                continue
            log.warning(
                "%s tier %d: Redis holds v%d, ours is v%d: rewriting as v%d",
                self.pop,
                tier,
                stored,
                current.version,
                current.version + 1,
            )
            self.rewrites += 1
            self._pending[tier] = Write(
                tier,
                current.version + 1,
                self.state.policy_version,
                current.table,
                dict(current.shares),
                [],
                self.clock(),
            )
            current.version += 1

    def handle(self, received: Received) -> None:
        on_heard(self.state, self.clock())
        if received.key is not None and received.key != self.pop.encode():
            return  # another PoP's policy or servers
        value = received.value
        if isinstance(value, PolicyEvent) and value.source == self.pop:
            self._guarded(lambda: self._on_policy(value))
        elif isinstance(value, PopLoad) and value.pop == self.pop:
            self._guarded(lambda: on_servers(self.state, value, self.clock()))

    def tick(self) -> None:
        if self.leadership is not None and self.leadership.hold() is None:
            raise Deposed(f"{self.pop}: the writer lock is {self.leadership.current_holder()}'s")
        self._check_redis()
        self._flush_pending()
        lapses = self.state.lapses
        with contextlib.suppress(RejectMessage):  # logged loudly; nothing to dead-letter
            self._guarded(lambda: on_tick(self.state, self.clock()))
        if self.state.lapses > lapses:
            metrics.LEASE_EXPIRIES.labels("writer").inc(self.state.lapses - lapses)
            log.error(
                "%s: POLICY LEASE RAN OUT (v%s not renewed by the engine): back to local, "
                "established connections kept by their second chance (%d lapses so far)",
                self.pop,
                self.state.lapsed_version,
                self.state.lapses,
            )

    def run(self, stop: threading.Event) -> None:
        run_ticking(
            lambda wait: self.consumer.poll_batch(self.handle, timeout=wait),
            self.tick,
            self.settings.table_tick_s,
            stop,
            self.clock,
        )

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.outbox.flush_timeout_s = 10.0
            if not self.outbox.flush():
                log.error("stopping with %d table notices unconfirmed", self.outbox.pending)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.table_writer.service [POP]``."""
    setup_logging()
    settings = TableWriterSettings()
    settings.start_telemetry()
    args = list(argv if argv is not None else sys.argv[1:])
    pop = args[0] if args else settings.table_pop
    if not pop:
        log.error("which PoP? set POPSHIFT_TABLE_POP or pass it as the first argument")
        return 2
    settings = settings.model_copy(update={"table_pop": pop})  # logs in as writer-<pop>
    network = load_network(settings.network_file)
    stop = threading.Event()
    install_stop_signals(stop)
    client: redis.Redis[bytes] = redis_client.connect(settings.redis())
    leadership = Leadership(
        client,
        writer_lock_key(pop, settings.table_key_prefix),
        settings.instance_id,
        settings.table_lock_ttl_s,
    )
    store = TableStore(
        client,
        settings.table_retain_s,
        prefix=settings.table_key_prefix,
        fence=leadership.fence_args(),
    )

    def start() -> TableWriterService:
        create_topics(
            settings.kafka(),
            [settings.topic(t) for t in (topics.POLICIES, topics.POP_LOAD, topics.TABLE_UPDATES)],
            settings.topic_partitions,
            timeout=5.0,
        )
        return TableWriterService(
            settings,
            network,
            pop,
            store,
            KafkaBus(settings.kafka()),
            leadership=leadership,
            engine_epoch=functools.partial(read_epoch, client, settings.policy_leader_key),
        )

    try:
        while wait_for_lock(leadership, stop, settings.table_tick_s):
            # Kafka or Redis down at start: wait for both (policies replay, tables adopted).
            service = until_ready(
                start,
                f"table writer {pop}",
                stop,
                (KafkaException, DeliveryFailed, redis.RedisError),
            )
            if service is None:
                break
            log.info("table writer for %s (2^%d buckets per tier)", pop, settings.table_bits)
            try:
                service.run(stop)
            except Deposed as exc:
                log.error("%s: STANDING DOWN, another writer owns the tables: %s", pop, exc)
            finally:
                service.close()
    finally:
        leadership.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
