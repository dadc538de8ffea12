"""Typed produce/consume of the schema models: on Kafka (confluent-kafka), or in memory for tests.

Guarantees every service relies on:
- producers are idempotent with acks=all, so a broker restart neither loses nor duplicates;
- every message carries a W3C ``traceparent``; the consumer's span is a child of the producer's;
- a payload that is too large, fails validation, or that a handler rejects goes to the topic's
  dead-letter topic with the reason, the original bytes and the source offset;
- an offset is committed only after its message was handled or dead-lettered.

Services take a :class:`Bus` and ask it for their producer, consumers and replays; ``main()``
passes a :class:`KafkaBus`, unit tests a :class:`MemoryBus` (as httpx ships a MockTransport).
Both run the same validation, dead-lettering and tracing code (:class:`_Intake`).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka import Producer as KafkaProducer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from pydantic import BaseModel, ValidationError

from popshift import metrics, tracing
from popshift.credentials import KafkaAccess
from popshift.replay import read_all
from popshift.topics import DEAD_LETTER_RETENTION_MS, Topic, topic_configs
from schemas.messages import DeadLetter

_tracer = trace.get_tracer("popshift.bus")
log = logging.getLogger("popshift.bus")

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576

DEFAULT_BUFFER_MESSAGES = 100_000
"""Messages a producer keeps queued while Kafka is unreachable (librdkafka's local queue);
a send beyond it is dropped and counted (``Producer.dropped``) instead of blocking the service."""

DEFAULT_MESSAGE_TIMEOUT_MS = 300_000
"""A queued message not acknowledged within this time fails (``Producer.failed``)."""


class RejectMessage(Exception):
    """Raised by a handler for a well-formed message it cannot accept (e.g. an unknown PoP).

    The consumer dead-letters the message with this reason and goes on.
    """


def transient(exc: KafkaException) -> bool:
    """Errors a long-running consumer waits out instead of dying on: the broker is away, or a
    topic created a moment ago is not in the metadata yet."""
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (
        err.retriable() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT)
    )


_COMMIT_LOST = frozenset(
    {KafkaError._ASSIGNMENT_LOST, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID}
)


class DeliveryFailed(Exception):
    """The producer could not deliver every message within the time allowed.

    ``undelivered``: still queued in the client (delivered later if the broker returns within
    its message timeout); ``failed``: deliveries that failed for good since the last flush (the
    sender must send those again if it still needs them).
    """

    def __init__(self, message: str, *, undelivered: int = 0, failed: int = 0) -> None:
        super().__init__(message)
        self.undelivered = undelivered
        self.failed = failed


_NOT_ALLOWED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)


def create_topics(
    kafka: KafkaAccess,
    topics: Iterable[Topic],
    partitions: int,
    timeout: float = 30.0,
    replication_factor: int = 1,
    min_insync_replicas: int | None = None,
) -> list[str]:
    """Create every topic and its dead-letter topic; existing ones are left as they are. Only
    the admin may create topics: for a service this is a check that they exist."""
    admin = AdminClient(kafka.config())
    durable = (
        {} if min_insync_replicas is None else {"min.insync.replicas": f"{min_insync_replicas}"}
    )
    wanted: list[NewTopic] = []
    for t in topics:
        wanted.append(
            NewTopic(
                t.name,
                num_partitions=t.partitions or partitions,
                replication_factor=replication_factor,
                config=topic_configs(t) | durable,
            )
        )
        wanted.append(
            NewTopic(
                t.dead_letter,
                num_partitions=1,
                replication_factor=replication_factor,
                config={"retention.ms": str(DEAD_LETTER_RETENTION_MS)} | durable,
            )
        )
    existing = set(admin.list_topics(timeout=timeout).topics)
    todo = [nt for nt in wanted if nt.topic not in existing]
    if not todo:
        return []
    for name, fut in admin.create_topics(todo, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code in _NOT_ALLOWED:  # a service: the admin makes topics (popshift/access.py)
                raise KafkaException(
                    KafkaError(
                        code,
                        f"topic {name} does not exist and {kafka.username} may not create it: "
                        "run `popshift topics create` as the admin",
                    )
                ) from exc
            if code != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    created = [nt.topic for nt in todo]
    _wait_for_leaders(admin, created, timeout)
    return created


def _wait_for_leaders(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Until every partition of ``names`` has a leader: a consumer that subscribes before the
    broker's metadata shows a new topic would otherwise wait for its next metadata refresh
    (minutes), e.g. when every service creates its topics just after the broker started."""
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=timeout).topics
        if all(
            n in meta
            and meta[n].error is None
            and meta[n].partitions
            and all(p.leader >= 0 for p in meta[n].partitions.values())
            for n in names
        ):
            return
        if time.monotonic() >= deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"no leaders yet: {names}"))
        time.sleep(0.1)


# --- what every consumer does the same way ----------------------------------------------------


def _describe(exc: ValidationError) -> str:
    """Name each failing field, so a reader of the dead-letter topic knows what to fix."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "invalid: " + "; ".join(parts)


def validate(topic: Topic, raw: bytes, max_message_bytes: int) -> Any:
    """The topic's schema model of ``raw``; RejectMessage (the reason) if too large or invalid."""
    if len(raw) > max_message_bytes:
        raise RejectMessage(f"oversized: {len(raw)} bytes > limit {max_message_bytes}")
    try:
        return topic.adapter.validate_json(raw)
    except ValidationError as exc:
        raise RejectMessage(_describe(exc)) from exc


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send as it is (a dead letter; what a faust sink publishes)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tracing.Headers


def dead_letter(
    topic: Topic,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    headers: tracing.Headers,
    reason: str,
) -> Outgoing:
    """The record that tells a reader of ``topic``'s dead-letter topic what was refused and why."""
    letter = DeadLetter(
        source_topic=topic.name,
        partition=partition,
        offset=offset,
        reason=reason[:4096],
        key_b64=base64.b64encode(key).decode() if key else None,
        payload_b64=base64.b64encode(raw).decode(),
        at=time.time(),
    )
    return Outgoing(
        topic.dead_letter,
        key,
        letter.model_dump_json().encode(),
        [*headers, ("popshift-reason", reason[:1024].encode())],
    )


@dataclass(frozen=True)
class Received:
    """A validated message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any
    raw: bytes
    timestamp_ms: int


@dataclass
class ConsumerStats:
    handled: int = 0
    dead_lettered: int = 0
    rejoined: int = 0  # times a group member found itself out of its group and joined anew
    reasons: Counter[str] = field(default_factory=Counter)


Handler = Callable[[Received], None]


class Producer(Protocol):
    """What services send with: :class:`TypedProducer` or :class:`MemoryProducer`."""

    delivered: int
    failed: int
    dropped: int

    def send(
        self,
        topic: Topic | str,
        key: str,
        message: BaseModel,
        *,
        made_of: Sequence[trace.SpanContext | None] = (),
    ) -> None: ...

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None: ...

    def poll(self, timeout: float = 0.0) -> int: ...

    def flush(self, timeout: float = 30.0) -> None: ...


class Consumer(Protocol):
    """What services receive with: :class:`TypedConsumer` or :class:`MemoryConsumer`."""

    stats: ConsumerStats

    def poll_batch(
        self, handler: Handler, timeout: float = 1.0, max_messages: int = 500
    ) -> int: ...

    def commit(self) -> None: ...

    def release(self) -> None:
        """With ``hold_offsets``: what was handled so far may now be committed."""
        ...

    def close(self) -> None: ...


Revoked = Callable[[list[tuple[str, int]]], None]
"""Called with the (topic, partition)s a group consumer is about to lose, before it loses them."""


class Bus(Protocol):
    """Where a service gets its producer, its consumers and its start-up replays from."""

    def producer(self) -> Producer: ...

    def consumer(
        self,
        group: str,
        topics: Sequence[Topic],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_producer: Producer | None = None,
        history_s: float | None = None,
        hold_offsets: bool = False,
        on_revoke: Revoked | None = None,
    ) -> Consumer:
        """A member of ``group`` sharing the topics' partitions and resuming at its committed
        offsets; or, with ``history_s``, a reader of every partition from ``history_s`` ago on
        that joins no group and commits nothing (for state that is the latest message per key,
        read by every replica of a service: a standby needs it too, and no rebalance or
        coordinator loss can ever stall it).

        ``hold_offsets``: a handled message is committed only after ``release()`` (a service
        that aggregates releases once its aggregate is sent: a crash in between re-reads the
        messages instead of losing them). ``on_revoke`` runs before partitions go to another
        member; what it releases is committed before they go."""
        ...

    def replay(self, topic: Topic, key: str | None = None) -> list[Any]:
        """Every valid message of ``topic`` (only ``key``'s if given), oldest first."""
        ...


def _span_parent(headers: tracing.Headers | None) -> Context:
    """The producer's trace context; a message without headers starts a trace."""
    return tracing.extract(headers) if headers else _NO_PARENT


_NO_PARENT = Context()


class _Intake:
    """Validate, handle inside a consumer span, dead-letter: shared by both consumers."""

    def __init__(
        self, topics: Sequence[Topic], max_message_bytes: int, dead_letter_producer: Producer
    ) -> None:
        self._topics = {t.name: t for t in topics}
        self._max_bytes = max_message_bytes
        self._dlq = dead_letter_producer
        self._span_names = {t.name: f"{t.name} process" for t in topics}
        self._consumed = {t.name: metrics.CONSUMED.labels(t.name) for t in topics}
        self.stats = ConsumerStats()

    def _dead_letter(self, source: str, letter: Outgoing, reason: str) -> None:
        self._dlq.send_raw(letter.topic, letter.key, letter.value, letter.headers)
        # A dead letter must be durable before the source offset moves past it.
        self._dlq.flush()
        self.stats.dead_lettered += 1
        why = reason.split(":", 1)[0]
        self.stats.reasons[why] += 1
        metrics.DEAD_LETTERED.labels(source, why).inc()

    def _process(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        raw: bytes,
        timestamp_ms: int,
        headers: tracing.Headers | None,
        handler: Handler,
    ) -> None:
        """Decode and handle one message inside a consumer span that is the producer's child.

        The span is started and made current by hand rather than with
        ``start_as_current_span``: same span, parent and error recording, a third of the cost
        (it is paid once per feedback message, tens of thousands of times a second).
        """
        parent = _span_parent(headers)
        span = _tracer.start_span(
            self._span_names[topic], context=parent, kind=trace.SpanKind.CONSUMER
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            source = self._topics[topic]
            self._consumed[topic].inc()
            try:
                value = validate(source, raw, self._max_bytes)
                handler(Received(topic, partition, offset, key, value, raw, timestamp_ms))
                self.stats.handled += 1
            except RejectMessage as exc:
                reason = str(exc)
                letter = dead_letter(source, partition, offset, key, raw, headers or [], reason)
                self._dead_letter(topic, letter, reason)
        except Exception as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                )
            raise
        finally:
            span.end()
            otel_context.detach(token)


class _Sender:
    """``send``: a schema model as JSON inside a producer span whose context goes along."""

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        raise NotImplementedError

    def send(
        self,
        topic: Topic | str,
        key: str,
        message: BaseModel,
        *,
        made_of: Sequence[trace.SpanContext | None] = (),
    ) -> None:
        """``made_of``: the spans of what the message was made of, oldest first: the newest is
        the send's parent, the others its links (popshift/tracing.py)."""
        name = topic if isinstance(topic, str) else topic.name
        parent, links = tracing.made_of(made_of)
        with _tracer.start_as_current_span(
            f"{name} send",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.destination": name},
            links=links,
        ):
            headers = tracing.inject([])
            self.send_raw(name, key, message.model_dump_json().encode(), headers)


# --- Kafka ----------------------------------------------------------------------------------


class TypedProducer(_Sender):
    """Sends schema models as JSON, with trace context, idempotently."""

    def __init__(
        self,
        kafka: KafkaAccess,
        extra_config: dict[str, Any] | None = None,
        *,
        buffer_messages: int = DEFAULT_BUFFER_MESSAGES,
    ) -> None:
        config: dict[str, Any] = {
            **kafka.config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": DEFAULT_MESSAGE_TIMEOUT_MS,
            "queue.buffering.max.messages": buffer_messages,
        }
        config.update(extra_config or {})
        self._producer = KafkaProducer(config)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0  # refused because the bounded local queue was full (broker away)
        self._produced: dict[str, Any] = {}  # topic -> its popshift_messages_produced child
        self._errors: list[str] = []  # since the last flush, which reports and clears them

    def _on_delivery(self, err: KafkaError | None, msg: KafkaMessage | None) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self._errors.append(str(err))
            metrics.PRODUCE_FAILED.labels(str(msg.topic()) if msg is not None else "").inc()

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        for attempt in range(2):
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                counter = self._produced.get(topic)
                if counter is None:
                    counter = self._produced[topic] = metrics.PRODUCED.labels(topic)
                counter.inc()
                break
            except BufferError:
                if attempt:
                    # The bounded queue is full (the broker is away): drop, count, go on, so
                    # that a long outage neither blocks the service nor grows it without bound.
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 10_000 == 0:
                        log.warning("Kafka producer queue full: %d messages dropped", self.dropped)
                    return
                self._producer.poll(0.1)  # serve delivery reports: room may free up
        self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every message; raise if any failed since the last flush (each failure is
        reported once, so one lost delivery does not fail every later flush)."""
        remaining = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise DeliveryFailed(
                f"{remaining} messages not delivered within {timeout}s, "
                f"{len(errors)} deliveries failed: {errors[:3]}",
                undelivered=remaining,
                failed=len(errors),
            )


class Outbox:
    """The latest message per (topic, key) until Kafka confirms it: what a service must not lose.

    ``send`` hands it to the producer at once; ``flush`` waits at most ``flush_timeout_s`` and
    never raises: on success nothing is left to confirm; a message still queued (broker away)
    stays unconfirmed and is flushed again on the next call; when a delivery failed for good,
    every unconfirmed message is sent again (only the latest per key: for compacted, versioned
    topics such as policies.v1 and for table-updates.v1 notices a repeat is harmless).
    """

    def __init__(self, producer: Producer, flush_timeout_s: float = 1.0) -> None:
        self.producer = producer
        self.flush_timeout_s = flush_timeout_s
        self._unconfirmed: dict[
            tuple[str, str], tuple[Topic | str, str, BaseModel, Sequence[trace.SpanContext | None]]
        ] = {}
        self.flush_failures = 0
        self.resent = 0

    @property
    def pending(self) -> int:
        return len(self._unconfirmed)

    def send(
        self,
        topic: Topic | str,
        key: str,
        message: BaseModel,
        *,
        slot: str | None = None,
        made_of: Sequence[trace.SpanContext | None] = (),
    ) -> None:
        """Send; ``slot`` (default: the key) names what a later message replaces."""
        name = topic if isinstance(topic, str) else topic.name
        self._unconfirmed[(name, slot or key)] = (topic, key, message, made_of)
        self.producer.send(topic, key, message, made_of=made_of)

    def flush(self) -> bool:
        """True when every message sent so far is confirmed."""
        if not self._unconfirmed:
            return True
        try:
            self.producer.flush(self.flush_timeout_s)
        except DeliveryFailed as exc:
            self.flush_failures += 1
            if self.flush_failures == 1 or self.flush_failures % 30 == 0:
                log.warning(
                    "%d messages unconfirmed (%d flushes failed so far): %s",
                    len(self._unconfirmed),
                    self.flush_failures,
                    exc,
                )
            if exc.failed:
                for topic, key, message, made_of in list(self._unconfirmed.values()):
                    self.producer.send(topic, key, message, made_of=made_of)
                    self.resent += 1
            return False
        self._unconfirmed.clear()
        return True

    def forget(self) -> int:
        """Stop sending again what is unconfirmed (it is no longer ours to say); how many."""
        dropped = len(self._unconfirmed)
        self._unconfirmed.clear()
        return dropped


def _header_list(msg: KafkaMessage) -> tracing.Headers | None:
    headers = msg.headers()
    if not headers:
        return None
    if isinstance(headers, dict):
        return list(headers.items())
    return [(str(h[0]), h[1]) for h in headers]


CLOSE_TIMEOUT_S = 10.0
ORPHAN_AFTER_S = 30.0
"""A group member not settled in its group (join state "steady") this long is stuck."""
ORPHAN_CHECK_EVERY_S = 15.0
GROUP_STATS_INTERVAL_MS = 5000


@dataclass
class OrphanWatch:
    """When a group member has been out of its group long enough to get a new client.

    Seen in the lab: after a broker restart, librdkafka's consumer timed out its session
    ("revoking assignment and rejoining group") and then never joined again, polling nothing for
    minutes while heartbeats piled up on its topic. A member out of the steady state is normal
    for a moment (a rebalance, a broker away); one out of it for ``after_s`` while a broker is
    up is stuck, and only a new client gets it back in. (The broker's own view, an
    admin DescribeGroups, is not used: librdkafka 2.x aborts the process when such a request
    times out, which is exactly when the broker is away.)
    """

    after_s: float = ORPHAN_AFTER_S
    every_s: float = ORPHAN_CHECK_EVERY_S
    _out_since: float | None = None
    _last_check: float | None = None

    def due(self, now: float, settled: bool) -> bool:
        """``settled``: the member's join state is steady (or no broker is up to join)."""
        if settled:
            self._out_since = None
            return False
        if self._out_since is None:
            self._out_since = now
        if now - self._out_since < self.after_s:
            return False
        if self._last_check is not None and now - self._last_check < self.every_s:
            return False
        self._last_check = now
        return True

    def reset(self, now: float) -> None:
        """A new client: it gets ``after_s`` to join before it is judged."""
        self._out_since = now
        self._last_check = None


@dataclass(frozen=True)
class GroupState:
    """What librdkafka's statistics say of a group member (its ``cgrp`` and ``brokers``)."""

    join_state: str = "init"
    assignment_size: int = 0
    broker_up: bool = False
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    """Per assigned partition, messages between the consumer's position and the end."""

    @classmethod
    def from_stats(cls, raw: str) -> GroupState:
        stats = json.loads(raw)
        cgrp = stats.get("cgrp") or {}
        brokers = (stats.get("brokers") or {}).values()
        lag = {
            (str(name), int(pid)): int(p["consumer_lag"])
            for name, topic in (stats.get("topics") or {}).items()
            for pid, p in (topic.get("partitions") or {}).items()
            if int(pid) >= 0 and p.get("consumer_lag", -1) >= 0
        }
        return cls(
            join_state=str(cgrp.get("join_state", "init")),
            assignment_size=int(cgrp.get("assignment_size", 0)),
            broker_up=any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers),
            lag=lag,
        )

    @property
    def settled(self) -> bool:
        """In the group as it stands. Not the assignment size: a member whose session timed
        out can keep its partitions on record while it waits for its revocation to complete,
        fetching nothing (seen after a broker restart)."""
        return self.join_state == "steady"


def close_within(close: Callable[[], object], timeout_s: float, what: str) -> bool:
    """Run ``close`` on a daemon thread and wait at most ``timeout_s`` for it."""
    done = threading.Thread(target=close, name=f"close {what}", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        log.warning("%s close did not return within %.0f s: abandoned", what, timeout_s)
        return False
    return True


class TypedConsumer(_Intake):
    """Validates every message against its topic's schema; dead-letters what it cannot accept."""

    def __init__(
        self,
        kafka: KafkaAccess,
        group: str,
        topics: Sequence[Topic],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_producer: Producer | None = None,
        extra_config: dict[str, Any] | None = None,
        history_s: float | None = None,
        hold_offsets: bool = False,
        on_revoke: Revoked | None = None,
    ) -> None:
        super().__init__(topics, max_message_bytes, dead_letter_producer or TypedProducer(kafka))
        self.hold_offsets = hold_offsets
        self._held: dict[tuple[str, int], int] = {}  # handled, not yet released: next offset
        self._on_revoke = on_revoke
        config: dict[str, Any] = {
            **kafka.config(),
            "group.id": group,
            "auto.offset.reset": "earliest",
            # Offsets are stored by hand after handling; the background commit only commits those.
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            # A subscribed topic missing from the metadata (just created, a broker just back)
            # is looked for again this often, not after librdkafka's default 5 minutes.
            "topic.metadata.refresh.interval.ms": 5000,
            # After a broker restart a consumer may lose its group coordinator and rejoin only
            # when its session times out: 10 s (not 45) bounds that stall of the control loop.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
        }
        self.history_s = history_s
        if history_s is not None:
            config["enable.auto.commit"] = False  # a reader, not a group member
        config.update(extra_config or {})
        self._config = config
        self._group = group
        self.orphan_watch = OrphanWatch()
        self.group_state = GroupState()
        if history_s is None:  # served by consume(), on the polling thread
            config["statistics.interval.ms"] = GROUP_STATS_INTERVAL_MS
            config["stats_cb"] = self._on_stats
        self._consumer = KafkaConsumer(config)
        if history_s is None:
            self._subscribe()
        else:
            self._consumer.assign(self._since(history_s))

    def _subscribe(self) -> None:
        self._consumer.subscribe(list(self._topics), on_revoke=self._revoking)

    def _revoking(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        """Served inside poll: the owner's last word on partitions before they go."""
        lost = [(str(tp.topic), int(tp.partition)) for tp in partitions]
        if self._on_revoke is not None and lost:
            self._on_revoke(lost)
        for key in lost:
            self._held.pop(key, None)  # the next owner re-reads them
        if lost:
            self.commit()

    def release(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, {}
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in held.items()]
            )
        except KafkaException as exc:  # a partition lost meanwhile: its next owner re-reads
            log.info("offsets not stored (%s): re-read by the partition's owner", exc)

    def _on_stats(self, raw: str) -> None:
        try:
            state = GroupState.from_stats(raw)
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        metrics.KAFKA_CONNECTED.labels(self._group).set(float(state.broker_up))
        metrics.GROUP_STEADY.labels(self._group).set(float(state.settled))
        for (topic, partition), lag in state.lag.items():
            metrics.CONSUMER_LAG.labels(self._group, topic, str(partition)).set(lag)
        if state.join_state != self.group_state.join_state:
            log.info(
                "consumer of group %s: join state %s -> %s (%d partitions, broker %s)",
                self._group, self.group_state.join_state, state.join_state,
                state.assignment_size, "up" if state.broker_up else "down",
            )  # fmt: skip
        self.group_state = state

    def _watch_membership(self) -> None:
        """A new client when this one has been out of its group too long (see OrphanWatch)."""
        state = self.group_state
        # a broker away is not the member's fault: the stretch counts while one is up
        if not self.orphan_watch.due(time.monotonic(), state.settled or not state.broker_up):
            return
        log.warning(
            "consumer of group %s has been out of its group, in join state %r, for %.0f s "
            "with the broker up: joining with a new client",
            self._group, state.join_state, self.orphan_watch.after_s,
        )  # fmt: skip
        self.rejoin()

    def rejoin(self) -> None:
        """Drop this client (uncommitted offsets are read again: at least once) for a new one."""
        close_within(self._consumer.close, 5.0, "orphaned Kafka consumer")
        self._consumer = KafkaConsumer(self._config)
        self._held.clear()  # the new client re-reads from the committed offsets
        self._subscribe()
        self.stats.rejoined += 1
        metrics.REJOINED.labels(self._group).inc()
        self.group_state = GroupState()
        self.orphan_watch.reset(time.monotonic())

    def _since(self, history_s: float) -> list[TopicPartition]:
        """Every partition of the topics at its first offset of the last ``history_s``."""
        since_ms = int((time.time() - history_s) * 1000)
        wanted = []
        for name in self._topics:
            meta = self._consumer.list_topics(name, timeout=5.0).topics[name]
            if meta.error is not None:
                raise KafkaException(meta.error)
            wanted += [TopicPartition(name, p, since_ms) for p in sorted(meta.partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=5.0)
        # No message that recent: from the end (OFFSET_END = -1, as offsets_for_times says).
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in found]

    def poll_batch(self, handler: Handler, timeout: float = 1.0, max_messages: int = 500) -> int:
        """Handle up to ``max_messages``; returns how many Kafka records were seen.

        Offsets are stored once per batch (the next offset after the last message handled or
        dead-lettered in each partition), also when a handler raises part-way: what was handled
        before it stays handled, the failing message and those after it are delivered again.
        """
        if self.history_s is None:
            self._watch_membership()
        msgs = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        seen = 0
        done: dict[tuple[str, int], int] = {}
        try:
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.code() == KafkaError._MAX_POLL_EXCEEDED:
                        # librdkafka left the group; it joins again on the next poll
                        log.warning("consumer of group %s: %s", self._group, err.str())
                        continue
                    raise KafkaException(err)
                seen += 1
                topic, partition, offset = (
                    str(msg.topic()),
                    int(msg.partition() or 0),
                    int(msg.offset() or 0),
                )
                self._process(
                    topic,
                    partition,
                    offset,
                    msg.key(),
                    msg.value() or b"",
                    msg.timestamp()[1],
                    _header_list(msg),
                    handler,
                )
                done[(topic, partition)] = offset
        finally:
            if done and self.history_s is None:
                if self.hold_offsets:
                    self._held.update({key: o + 1 for key, o in done.items()})
                else:
                    self._consumer.store_offsets(
                        offsets=[TopicPartition(t, p, o + 1) for (t, p), o in done.items()]
                    )
        return seen

    def commit(self) -> None:
        """Commit stored offsets now (e.g. before a clean shutdown)."""
        if self.history_s is not None:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError._NO_OFFSET:
                return
            if code in _COMMIT_LOST or transient(exc):
                # The broker was away or the group moved on: the next owner re-reads from the
                # last committed offset (at least once), nothing to die for.
                log.warning("commit failed, going on: %s", exc)
                return
            raise

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Commit and leave the group, waiting at most ``timeout_s`` for librdkafka's close
        (seen after a broker restart: it can block for good); a client that does not close is
        abandoned on a daemon thread, so that a shutdown never hangs on it."""
        self.commit()
        close_within(self._consumer.close, timeout_s, "Kafka consumer")


@dataclass(frozen=True)
class KafkaBus:
    """The real bus: every producer and consumer is a confluent-kafka client of ``kafka``."""

    kafka: KafkaAccess
    replay_timeout_s: float = 30.0

    def producer(self) -> TypedProducer:
        return TypedProducer(self.kafka)

    def consumer(
        self,
        group: str,
        topics: Sequence[Topic],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_producer: Producer | None = None,
        history_s: float | None = None,
        hold_offsets: bool = False,
        on_revoke: Revoked | None = None,
    ) -> TypedConsumer:
        return TypedConsumer(
            self.kafka,
            group,
            topics,
            max_message_bytes=max_message_bytes,
            dead_letter_producer=dead_letter_producer,
            history_s=history_s,
            hold_offsets=hold_offsets,
            on_revoke=on_revoke,
        )

    def replay(self, topic: Topic, key: str | None = None) -> list[Any]:
        return read_all(self.kafka, topic, key=key, timeout_s=self.replay_timeout_s)


# --- in memory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message as the in-memory bus keeps it (one partition per topic)."""

    offset: int
    key: bytes | None
    value: bytes
    headers: tracing.Headers
    timestamp_ms: int


class MemoryBus:
    """Topics as lists in this process: the bus of unit tests.

    Same interfaces and the same validation, dead letters and spans as Kafka; delivery is
    immediate, every topic has one partition, and a consumer group's offset is committed as
    each message is handled or dead-lettered (so a new consumer of the group resumes there).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.logs: dict[str, list[Record]] = {}
        self.offsets: dict[tuple[str, str], int] = {}  # (group, topic) -> next offset
        self.clock = clock  # stamps each record, as a broker's LogAppendTime does

    def append(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        log = self.logs.setdefault(topic, [])
        raw_key = key.encode() if isinstance(key, str) else key
        log.append(Record(len(log), raw_key, value, list(headers), int(self.clock() * 1000)))

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self)

    def consumer(
        self,
        group: str,
        topics: Sequence[Topic],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_producer: Producer | None = None,
        history_s: float | None = None,
        hold_offsets: bool = False,
        on_revoke: Revoked | None = None,
    ) -> MemoryConsumer:
        del on_revoke  # one member per group in memory: nothing is ever revoked
        return MemoryConsumer(
            self,
            group,
            topics,
            max_message_bytes,
            dead_letter_producer or self.producer(),
            history_s=history_s,
            hold_offsets=hold_offsets,
        )

    def replay(self, topic: Topic, key: str | None = None) -> list[Any]:
        want = None if key is None else key.encode()
        out = []
        for record in self.logs.get(topic.name, []):
            if want is not None and record.key != want:
                continue
            try:
                out.append(topic.adapter.validate_json(record.value))
            except ValidationError:
                continue  # as on Kafka: the live consumer dead-lettered it
        return out

    def dead_letters(self, topic: Topic) -> list[DeadLetter]:
        """What consumers of ``topic`` refused, oldest first."""
        return [
            DeadLetter.model_validate_json(r.value) for r in self.logs.get(topic.dead_letter, [])
        ]


class MemoryProducer(_Sender):
    """Appends to the bus at once; every send is delivered."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        self._bus.append(topic, key, value, headers)
        self.delivered += 1

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 30.0) -> None:
        return None


class MemoryConsumer(_Intake):
    """Reads its group's topics from the group's committed offsets; never waits."""

    def __init__(
        self,
        bus: MemoryBus,
        group: str,
        topics: Sequence[Topic],
        max_message_bytes: int,
        dead_letter_producer: Producer,
        *,
        history_s: float | None = None,
        hold_offsets: bool = False,
    ) -> None:
        super().__init__(topics, max_message_bytes, dead_letter_producer)
        self._bus = bus
        self.hold_offsets = hold_offsets
        self._read: dict[str, int] = {}  # read, not yet released (hold_offsets)
        # A group's offsets live in the bus; a history reader keeps its own.
        self.group: str | None = group if history_s is None else None
        self._own: dict[str, int] = {}
        if history_s is not None:
            since_ms = int((time.time() - history_s) * 1000)
            for topic in self._topics:
                log = bus.logs.get(topic, [])
                self._own[topic] = next(
                    (r.offset for r in log if r.timestamp_ms >= since_ms), len(log)
                )

    def _offset(self, topic: str) -> int:
        if self.group is None:
            return self._own.get(topic, 0)
        if topic in self._read:
            return self._read[topic]
        return self._bus.offsets.get((self.group, topic), 0)

    def _advance(self, topic: str, offset: int) -> None:
        if self.group is None:
            self._own[topic] = offset
        elif self.hold_offsets:
            self._read[topic] = offset
        else:
            self._bus.offsets[(self.group, topic)] = offset

    def release(self) -> None:
        if self.group is not None:
            for topic, offset in self._read.items():
                self._bus.offsets[(self.group, topic)] = offset

    def poll_batch(self, handler: Handler, timeout: float = 1.0, max_messages: int = 500) -> int:
        """Handle up to ``max_messages``; a handler that raises leaves its message unread."""
        seen = 0
        for topic in self._topics:
            log = self._bus.logs.get(topic, [])
            while seen < max_messages and self._offset(topic) < len(log):
                r = log[self._offset(topic)]
                seen += 1
                self._process(
                    topic, 0, r.offset, r.key, r.value, r.timestamp_ms, r.headers, handler
                )
                self._advance(topic, r.offset + 1)
        return seen

    def commit(self) -> None:
        return None  # offsets are committed as messages are handled

    def close(self) -> None:
        return None
