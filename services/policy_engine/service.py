"""The policy engine as a process: bus in, :func:`engine.decide`, bus out. Nothing else.

Run: ``python -m services.policy_engine.service`` (SIGTERM/SIGINT stop it cleanly). On start it
reads policies.v1 whole (compacted) so versions keep rising and unchanged policies are not
re-issued; overrides come from the YAML file and from Redis (``popshift policy ...``).

Any number of engines may run: the one holding the leader lock (popshift/leadership.py) publishes,
stamping its epoch on every policy; the others read the same inputs (every partition, no
consumer group, from ``POPSHIFT_POLICY_STATUS_MAX_AGE_S`` ago) and stay silent. An engine that
takes the lead first reads policies.v1 again, so it continues from the last leader's policies.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence

import redis
from confluent_kafka import KafkaException
from opentelemetry import trace

from popshift import metrics, redis_client, topics, tracing
from popshift.bus import (
    Bus,
    DeliveryFailed,
    KafkaBus,
    Outbox,
    Received,
    RejectMessage,
    create_topics,
)
from popshift.leadership import Leadership
from popshift.network import NetworkConfig, load_network
from popshift.process import install_stop_signals, run_ticking, setup_logging, until_ready
from schemas.messages import PolicyEvent, PopStatus
from services.policy_engine.engine import (
    LAPSED,
    EngineState,
    SetOverrides,
    Tick,
    UnknownPop,
    decide,
    restore,
)
from services.policy_engine.overrides import InvalidOverride, Overrides, load_overrides
from services.policy_engine.settings import PolicySettings

log = logging.getLogger("popshift.policy_engine")

OverridesSource = Callable[[], Overrides]


def redis_overrides(client: redis.Redis[bytes], key: str) -> Overrides:
    """The CLI's overrides (none if the key is absent)."""
    raw = client.get(key)
    return Overrides.model_validate_json(raw) if raw else Overrides()


class PolicyEngineService:
    def __init__(
        self,
        settings: PolicySettings,
        network: NetworkConfig,
        bus: Bus,
        *,
        overrides: OverridesSource | None = None,
        leadership: Leadership | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.state = EngineState(network, settings.engine_config())
        self.file_overrides = load_overrides(settings.policy_overrides_file).check(network)
        self._cli_overrides = overrides
        self.policies = settings.topic(topics.POLICIES)
        inputs = [settings.topic(topics.POP_STATUS), settings.topic(topics.DATAPLANE_STATS)]
        self.producer = bus.producer()
        # Policies not yet confirmed by Kafka, the latest per source: sent again if lost.
        self.outbox = Outbox(self.producer, flush_timeout_s=min(1.0, settings.policy_tick_s))
        restore(self.state, bus.replay(self.policies))
        self.consumer = bus.consumer(
            settings.policy_group,
            inputs,
            max_message_bytes=settings.max_message_bytes,
            dead_letter_producer=self.producer,
            history_s=settings.policy_status_max_age_s,
        )
        self._bus = bus
        self.leadership = leadership
        self.leading_epoch: int | None = None if leadership is not None else 0
        self.published = 0
        self.state_changed = False  # a pop-status changed its PoP's state since the last tick
        self._last_native_log = 0.0
        # per PoP, the span of its latest pop-status: a policy goes on from those it came of
        self._status_spans: dict[str, trace.SpanContext | None] = {}

    def handle(self, received: Received) -> None:
        value = received.value
        if isinstance(value, PopStatus) and (model := self.state.pops.get(value.pop)):
            self._status_spans[value.pop] = tracing.here()
            before = model.status
            if before is None or (value.state is not before.state and value.at >= before.at):
                self.state_changed = True
        try:
            decide(self.state, value, self.clock())
        except UnknownPop as exc:
            raise RejectMessage(str(exc)) from exc

    def poll(self, wait_s: float) -> None:
        """Handle what arrived; a PoP that changed state (newly shedding, or calm again) is
        acted on at once, not at the next tick: a tick's wait is time an overload is not
        relieved (up to ``policy_tick_s``)."""
        self.consumer.poll_batch(self.handle, timeout=wait_s)
        if self.state_changed:
            self.tick()

    def _refresh_overrides(self, now: float) -> None:
        extra = Overrides()
        if self._cli_overrides is not None:
            try:
                extra = self._cli_overrides()
            except (redis.RedisError, ValueError) as exc:
                log.warning("overrides: keeping the last ones, source failed: %s", exc)
                return
        try:
            decide(self.state, SetOverrides(self.file_overrides.merged(extra)), now)
        except InvalidOverride as exc:
            log.error("overrides refused, keeping the last ones: %s", exc)

    def tick(self) -> list[PolicyEvent]:
        """Re-solve and publish what changed (durably, before the next round).

        Kafka away: the events stay in the outbox (each source's current policy) and are
        flushed, or sent again if their delivery failed, on every later tick; never raises.
        """
        now = self.clock()
        self.state_changed = False
        if not self._leading():
            return []
        self._refresh_overrides(now)
        with metrics.ROUND_SECONDS.time():
            _, events = decide(self.state, Tick(), now)
        self._log_native(now)
        for event in events:
            # made of the destinations' statuses and, last (its parent), the source's own
            inputs = [*sorted({s.destination for s in event.shares}), event.source]
            self.outbox.send(
                self.policies,
                event.source,
                event,
                made_of=[self._status_spans.get(p) for p in inputs],
            )
            metrics.POLICY_EVENTS.labels(event.action.value).inc()
            if event.reason.rule.startswith(LAPSED):
                metrics.LEASE_EXPIRIES.labels("engine").inc()
            log.info(
                "policy v%d %s %s: %s",
                event.version,
                event.action.value,
                event.source,
                event.reason.rule,
            )
        self.outbox.flush()
        self.published += len(events)
        return events

    def _log_native(self, now: float) -> None:
        """Once a second, the native demand the solver was given next to the measured load, so
        that a run can compare the estimate with the truth (the lab knows the true demand)."""
        if now - self._last_native_log < 1.0 or not self.state.native:
            return
        self._last_native_log = now
        parts = []
        for name, tiers in sorted(self.state.native.items()):
            status = self.state.pops[name].status
            load = f"{status.load_cores:.3f}/{status.capacity_cores:.3f}" if status else "-"
            model = self.state.pops[name]
            reach = "".join(f" reach t{t} {r:.2f}" for t, r in sorted(model.reach.items()))
            boost = f" boost {model.boost:.3f}" if model.boost else ""
            parts.append(f"{name}={sum(tiers.values()):.3f} (load {load}{reach}{boost})")
        log.info("native cores: %s", " ".join(parts))

    def _leading(self) -> bool:
        """Hold the lead (or wait as a standby); on taking it, continue from the last leader's
        policies under the new epoch. Without a lock (tests, the simulator) always leading."""
        if self.leadership is None:
            return True
        epoch = self.leadership.hold(floor=self.state.epoch)
        if epoch is None:
            if self.leading_epoch is not None:
                dropped = self.outbox.forget()  # a deposed engine's word no longer counts
                log.warning("standing by (%d unconfirmed policies dropped)", dropped)
            self.leading_epoch = None
            return False
        if epoch != self.leading_epoch:
            # The last leader's policies, up to now: versions keep rising, nothing re-issued.
            try:
                restore(self.state, self._bus.replay(self.policies))
            except (KafkaException, TimeoutError) as exc:
                log.warning(
                    "took the lead (epoch %d); policies.v1 not readable yet: %s", epoch, exc
                )
                return False  # again next tick; the lock is ours meanwhile
            self.state.epoch = epoch
            self.leading_epoch = epoch
            log.warning("leading as epoch %d from version %d", epoch, self.state.version)
        return True

    def run(self, stop: threading.Event) -> None:
        run_ticking(
            self.poll,
            self.tick,
            self.settings.policy_tick_s,
            stop,
            self.clock,
        )

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.outbox.flush_timeout_s = 10.0
            if not self.outbox.flush():
                log.error("stopping with %d policies unconfirmed", self.outbox.pending)
            if self.leadership is not None:
                self.leadership.release()  # a standby takes over at once


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m services.policy_engine.service``."""
    del argv  # configured by POPSHIFT_* only
    setup_logging()
    settings = PolicySettings()
    settings.start_telemetry()
    network = load_network(settings.network_file)
    stop = threading.Event()
    install_stop_signals(stop)
    client: redis.Redis[bytes] = redis_client.connect(settings.redis())

    def start() -> PolicyEngineService:
        create_topics(
            settings.kafka(),
            [
                settings.topic(t)
                for t in (topics.POP_STATUS, topics.DATAPLANE_STATS, topics.POLICIES)
            ],
            settings.topic_partitions,
            timeout=5.0,
        )
        return PolicyEngineService(
            settings,
            network,
            KafkaBus(settings.kafka()),
            overrides=lambda: redis_overrides(client, settings.policy_overrides_key),
            leadership=Leadership(
                client,
                settings.policy_leader_key,
                settings.instance_id,
                settings.policy_leader_ttl_s,
            ),
        )

    # Kafka down at start: wait for it (replaying policies.v1 needs it), then start.
    service = until_ready(start, "policy engine: Kafka", stop, (KafkaException, DeliveryFailed))
    if service is None:
        return 0
    log.info("policy engine for %d PoPs, version %d", len(network.pops), service.state.version)
    try:
        service.run(stop)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
