"""One PoP's table writer as a process: policies.v1 and pop-load.v1 in, Redis tables out.

Run: ``POPSHIFT_TABLE_POP=a python -m services.table_writer.service``. On start it adopts the
tables already in Redis and replays its own PoP's latest policy from the compacted topic, so a
restart converges to the same tables. A Redis failure leaves the state's tables as they were;
the next tick retries the same write (the forwarders keep their last good table meanwhile).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import redis

from popshift import redis_client, topics
from popshift.bus import Bus, KafkaBus, Received, RejectMessage, create_topics
from popshift.network import NetworkConfig, load_network
from popshift.process import install_stop_signals, run_ticking, setup_logging
from schemas.messages import PolicyEvent, PopLoad, TableUpdate
from services.table_writer.codec import Header
from services.table_writer.settings import TableWriterSettings
from services.table_writer.store import StaleVersion, TableStore
from services.table_writer.table import Table, TableInvariantError
from services.table_writer.writer import (
    PolicyRejected,
    Write,
    adopt,
    commit,
    new_state,
    on_policy,
    on_servers,
    on_tick,
)

log = logging.getLogger("popshift.table_writer")


class Tables(Protocol):
    """Where the versioned tables live: :class:`TableStore` (Redis), or a dict in tests."""

    def read(self, pop: str, tier: int) -> tuple[Header, Table] | None: ...

    def write(self, table: Table, header: Header) -> None:
        """Raises StaleVersion if the store holds ``header.version`` or newer already."""
        ...


class TableWriterService:
    def __init__(
        self,
        settings: TableWriterSettings,
        network: NetworkConfig,
        pop: str,
        store: Tables,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pop = pop
        self.clock = clock
        self.state = new_state(network, pop, settings.table_bits, settings.table_drain_period_s)
        self.store = store
        self.updates = settings.topic(topics.TABLE_UPDATES)
        self.producer = bus.producer()
        self.written = 0
        self.refused = 0
        self._adopt_from_redis()
        policies = settings.topic(topics.POLICIES)
        for event in bus.replay(policies, key=pop):
            with contextlib.suppress(RejectMessage):  # logged; the live consumer dead-letters
                self._guarded(functools.partial(on_policy, self.state, event, self.clock()))
        self.consumer = bus.consumer(
            f"{settings.table_group_prefix}-{pop}",
            [policies, settings.topic(topics.POP_LOAD)],
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=self.producer,
        )

    def _adopt_from_redis(self) -> None:
        for tier in self.state.forwardable:
            found = self.store.read(self.pop, tier)
            if found is None:
                continue
            header, table = found
            if header.bits != self.state.bits:
                log.warning(
                    "tier %d: table in Redis has 2^%d buckets, rebuilding", tier, header.bits
                )
                continue
            adopt(self.state, tier, table, header.version, header.policy_version, header.shares)

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
        self._write(writes)

    def _write(self, writes: list[Write]) -> None:
        for w in writes:
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
            try:
                self.store.write(w.table, header)
            except StaleVersion as exc:
                log.error("%s tier %d: %s; re-reading Redis", self.pop, w.tier, exc)
                self._adopt_from_redis()
                return
            except redis.RedisError as exc:
                log.warning(
                    "%s tier %d: Redis write failed, retrying next tick: %s", self.pop, w.tier, exc
                )
                return
            commit(self.state, w)
            self.written += 1
            update = TableUpdate(
                pop=self.pop,
                tier=w.tier,
                version=w.version,
                policy_version=w.policy_version,
                buckets_changed=len(w.changed),
                written_at=now,
            )
            self.producer.send(self.updates, self.pop, update)
        if writes:
            self.producer.flush()

    def handle(self, received: Received) -> None:
        if received.key is not None and received.key != self.pop.encode():
            return  # another PoP's policy or servers
        value = received.value
        if isinstance(value, PolicyEvent) and value.source == self.pop:
            self._guarded(lambda: on_policy(self.state, value, self.clock()))
        elif isinstance(value, PopLoad) and value.pop == self.pop:
            self._guarded(lambda: on_servers(self.state, value, self.clock()))

    def tick(self) -> None:
        with contextlib.suppress(RejectMessage):  # logged loudly; nothing to dead-letter
            self._guarded(lambda: on_tick(self.state, self.clock()))

    def run(self, stop: threading.Event) -> None:
        run_ticking(
            lambda wait: self.consumer.poll_batch(self.handle, timeout=wait),
            self.tick,
            self.settings.table_tick_s,
            stop,
            self.clock,
        )

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.table_writer.service [POP]``."""
    setup_logging()
    settings = TableWriterSettings()
    args = list(argv if argv is not None else sys.argv[1:])
    pop = args[0] if args else settings.table_pop
    if not pop:
        log.error("which PoP? set POPSHIFT_TABLE_POP or pass it as the first argument")
        return 2
    network = load_network(settings.network_file)
    create_topics(
        settings.kafka_bootstrap,
        [settings.topic(t) for t in (topics.POLICIES, topics.POP_LOAD, topics.TABLE_UPDATES)],
        settings.topic_partitions,
    )
    client: redis.Redis[bytes] = redis_client.connect(settings.redis_url)
    store = TableStore(client, settings.table_retain_s, prefix=settings.table_key_prefix)
    service = TableWriterService(settings, network, pop, store, KafkaBus(settings.kafka_bootstrap))
    stop = threading.Event()
    install_stop_signals(stop)
    log.info("table writer for %s (2^%d buckets per tier)", pop, settings.table_bits)
    try:
        service.run(stop)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
