"""Typed Kafka produce/consume of the schema models, on confluent-kafka.

Guarantees every service relies on:
- producers are idempotent with acks=all, so a broker restart neither loses nor duplicates;
- every message carries a W3C ``traceparent``; the consumer's span is a child of the producer's;
- a payload that fails validation (or that a handler rejects) goes to the topic's dead-letter
  topic with the reason, the original bytes and the source offset;
- an offset is committed only after its message was handled or dead-lettered.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka import Message as KafkaMessage
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from pydantic import BaseModel, ValidationError

from popshift import tracing
from popshift.topics import DEAD_LETTER_RETENTION_MS, Topic, topic_configs
from schemas.messages import DeadLetter

_tracer = trace.get_tracer("popshift.bus")


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


class DeliveryFailed(Exception):
    """The producer could not deliver every message within the time allowed."""


def create_topics(
    bootstrap: str, topics: Iterable[Topic], partitions: int, timeout: float = 30.0
) -> list[str]:
    """Create every topic and its dead-letter topic; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted: list[NewTopic] = []
    for t in topics:
        wanted.append(
            NewTopic(
                t.name,
                num_partitions=t.partitions or partitions,
                replication_factor=1,
                config=topic_configs(t),
            )
        )
        wanted.append(
            NewTopic(
                t.dead_letter,
                num_partitions=1,
                replication_factor=1,
                config={"retention.ms": str(DEAD_LETTER_RETENTION_MS)},
            )
        )
    existing = set(admin.list_topics(timeout=timeout).topics)
    todo = [nt for nt in wanted if nt.topic not in existing]
    if not todo:
        return []
    for _name, fut in admin.create_topics(todo, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return [nt.topic for nt in todo]


class TypedProducer:
    """Sends schema models as JSON, with trace context, idempotently."""

    def __init__(self, bootstrap: str, extra_config: dict[str, Any] | None = None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 300_000,
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self.delivered = 0
        self.failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: KafkaMessage) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed.append(str(err))

    def send_raw(
        self, topic: str, key: str | bytes | None, value: bytes, headers: tracing.Headers
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                # Local queue full (e.g. the broker is away): wait for room, never drop.
                self._producer.poll(0.1)
        self._producer.poll(0)

    def send(self, topic: Topic | str, key: str, message: BaseModel) -> None:
        name = topic if isinstance(topic, str) else topic.name
        with _tracer.start_as_current_span(
            f"{name} send", kind=trace.SpanKind.PRODUCER, attributes={"messaging.destination": name}
        ):
            headers = tracing.inject([])
            self.send_raw(name, key, message.model_dump_json().encode(), headers)

    def poll(self, timeout: float = 0.0) -> int:
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryFailed(f"{remaining} messages not delivered within {timeout}s")
        if self.failed:
            raise DeliveryFailed(f"delivery failed: {self.failed[:3]}")


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
    reasons: Counter[str] = field(default_factory=Counter)


Handler = Callable[[Received], None]


def _header_list(msg: KafkaMessage) -> tracing.Headers:
    headers = msg.headers() or []
    if isinstance(headers, dict):
        return list(headers.items())
    return [(str(h[0]), h[1]) for h in headers]


_NO_PARENT = Context()


def _parent_context(msg: KafkaMessage) -> Context:
    """The producer's trace context from the headers; a message without headers starts a trace."""
    if not msg.headers():
        return _NO_PARENT
    return tracing.extract(_header_list(msg))


def _describe(exc: ValidationError) -> str:
    """Name each failing field, so a reader of the dead-letter topic knows what to fix."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "invalid: " + "; ".join(parts)


class TypedConsumer:
    """Validates every message against its topic's schema; dead-letters what it cannot accept."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[Topic],
        *,
        max_message_bytes: int = 1_048_576,
        dead_letter_producer: TypedProducer | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            # Offsets are stored by hand after handling; the background commit only commits those.
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
        }
        config.update(extra_config or {})
        self._consumer = Consumer(config)
        self._topics = {t.name: t for t in topics}
        self._consumer.subscribe(list(self._topics))
        self._max_bytes = max_message_bytes
        self._dlq = dead_letter_producer or TypedProducer(bootstrap)
        self._span_names: dict[str, str] = {}
        self.stats = ConsumerStats()

    def _decode(self, msg: KafkaMessage) -> Any:
        raw = msg.value() or b""
        if len(raw) > self._max_bytes:
            raise RejectMessage(f"oversized: {len(raw)} bytes > limit {self._max_bytes}")
        topic = self._topics[str(msg.topic())]
        try:
            return topic.adapter.validate_json(raw)
        except ValidationError as exc:
            raise RejectMessage(_describe(exc)) from exc

    def dead_letter(self, msg: KafkaMessage, reason: str) -> None:
        topic = self._topics[str(msg.topic())]
        key = msg.key()
        letter = DeadLetter(
            source_topic=str(msg.topic()),
            partition=int(msg.partition() or 0),
            offset=int(msg.offset() or 0),
            reason=reason[:4096],
            key_b64=base64.b64encode(key).decode() if key else None,
            payload_b64=base64.b64encode(msg.value() or b"").decode(),
            at=time.time(),
        )
        self._dlq.send_raw(
            topic.dead_letter,
            key,
            letter.model_dump_json().encode(),
            [*_header_list(msg), ("popshift-reason", reason[:1024].encode())],
        )
        # A dead letter must be durable before the source offset moves past it.
        self._dlq.flush()
        self.stats.dead_lettered += 1
        self.stats.reasons[reason.split(":", 1)[0]] += 1

    def _process(self, msg: KafkaMessage, handler: Handler) -> None:
        """Decode and handle one message inside a consumer span that is the producer's child.

        The span is started and made current by hand rather than with
        ``start_as_current_span``: same span, parent and error recording, a third of the cost
        (it is paid once per feedback message, tens of thousands of times a second).
        """
        topic = str(msg.topic())
        parent = _parent_context(msg)
        span = _tracer.start_span(
            self._span_names.get(topic) or self._span_name(topic),
            context=parent,
            kind=trace.SpanKind.CONSUMER,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            raw = msg.value() or b""
            try:
                value = self._decode(msg)
                handler(
                    Received(
                        topic=topic,
                        partition=int(msg.partition() or 0),
                        offset=int(msg.offset() or 0),
                        key=msg.key(),
                        value=value,
                        raw=raw,
                        timestamp_ms=msg.timestamp()[1],
                    )
                )
                self.stats.handled += 1
            except RejectMessage as exc:
                self.dead_letter(msg, str(exc))
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

    def _span_name(self, topic: str) -> str:
        name = self._span_names[topic] = f"{topic} process"
        return name

    def poll_batch(self, handler: Handler, timeout: float = 1.0, max_messages: int = 500) -> int:
        """Handle up to ``max_messages``; returns how many Kafka records were seen.

        Offsets are stored once per batch (the next offset after the last message handled or
        dead-lettered in each partition), also when a handler raises part-way: what was handled
        before it stays handled, the failing message and those after it are delivered again.
        """
        msgs = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        seen = 0
        done: dict[tuple[str, int], int] = {}
        try:
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                seen += 1
                self._process(msg, handler)
                done[(str(msg.topic()), int(msg.partition() or 0))] = int(msg.offset() or 0)
        finally:
            if done:
                self._consumer.store_offsets(
                    offsets=[TopicPartition(t, p, o + 1) for (t, p), o in done.items()]
                )
        return seen

    def commit(self) -> None:
        """Commit stored offsets now (e.g. before a clean shutdown)."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        self.commit()
        self._consumer.close()
