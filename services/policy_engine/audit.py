"""The operators' audit trail: who changed which override, when, why, and what came of it.

Every ``popshift policy pin|forbid|drain|clear`` writes to policy-audit.v1 (popshift/topics.py:
append-only, 400 days, one partition), in this order (services/policy_engine/cli.py):

1. ``requested`` (the overrides before, after and the changes) before Redis is touched, and
   confirmed by Kafka (acks=all). Not confirmed within ``POPSHIFT_POLICY_AUDIT_TIMEOUT_S``, or
   the topic missing: the change is not made and the command fails. So no override ever
   changes without a durable record of who asked for it and why.
2. ``applied`` or ``failed`` (with the error) after the Redis transaction, under the same id.
   Should this one not be written the change stands and the command warns: the trail then
   shows a request without an outcome, which a reader takes as "maybe applied" and compares
   with ``popshift policy show``.

A change the rules refuse writes one ``refused`` record (best effort: it is refused anyway), so
attempts show too. ``by`` is who the operator says they are (``--by``); ``os_user`` (from the
process's uid), ``host`` and ``pid`` are what the client's machine says: enough to tell apart
operators who forget ``--by``, not proof against one who holds the operator's password and lies
(docs/security.md, "Known limits").
The trail is only as tamper-proof as the broker's ACLs: only operators may write the topic, and
nobody may delete records or alter its retention.
"""

from __future__ import annotations

import getpass
import os
import pwd
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from popshift import topics
from popshift.bus import DeliveryFailed, Producer, TypedProducer
from popshift.replay import read_all
from popshift.topics import Topic
from schemas.messages import (
    MAX_REASON_CHARS,
    AuditOutcome,
    ChangeKind,
    OverrideChange,
    PolicyAudit,
)
from services.policy_engine.overrides import Overrides
from services.policy_engine.settings import PolicySettings


class AuditUnavailable(Exception):
    """The audit record could not be written (and confirmed): the change must not be made."""


def _os_user() -> str:
    """The user this process runs as, from its uid (``USER``/``LOGNAME`` are anyone's to set)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid {uid}"


@dataclass(frozen=True)
class Operator:
    """Who runs a command: as they say (``by``) and as the machine says."""

    by: str
    os_user: str
    host: str
    pid: int

    @classmethod
    def current(cls, by: str | None = None) -> Operator:
        os_user = _os_user()
        if by is None:
            try:
                by = getpass.getuser()
            except (KeyError, OSError):
                by = os_user
        return cls(by=by, os_user=os_user, host=socket.gethostname()[:255], pid=os.getpid())


def changes(before: Overrides, after: Overrides) -> list[OverrideChange]:
    """What ``after`` adds, removes and changes relative to ``before``, in a stable order."""
    out: list[OverrideChange] = []
    old, new = before.pinned, after.pinned
    for tier, src, dst in sorted(old.keys() | new.keys()):
        was, now = old.get((tier, src, dst)), new.get((tier, src, dst))
        if was != now:
            change: ChangeKind = "added" if was is None else "removed" if now is None else "changed"
            out.append(
                OverrideChange(
                    change=change,
                    kind="pin",
                    source=src,
                    destination=dst,
                    tier=tier,
                    share_before=was,
                    share_after=now,
                )
            )
    gone: ChangeKind = "removed"
    came: ChangeKind = "added"
    for change, pairs in (
        (gone, before.forbidden - after.forbidden),
        (came, after.forbidden - before.forbidden),
    ):
        out += [
            OverrideChange(change=change, kind="forbid", source=s, destination=d)
            for s, d in sorted(pairs)
        ]
    drained, drains = set(before.drain), set(after.drain)
    for change, pops in ((gone, drained - drains), (came, drains - drained)):
        out += [OverrideChange(change=change, kind="drain", pop=p) for p in sorted(pops)]
    return out


def clip(text: str) -> str:
    """A free text (an error, a reason) cut to what a record carries."""
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


class AuditTrail:
    """Writes records one at a time, each confirmed before :meth:`write` returns."""

    def __init__(self, producer: Producer, topic: Topic, timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    def write(self, record: PolicyAudit) -> None:
        """Send and wait for the broker's ack; :class:`AuditUnavailable` if there is none."""
        before = self.producer.delivered
        try:
            self.producer.send(self.topic, record.pops[0] if record.pops else "all", record)
            self.producer.flush(self.timeout_s)
        except (DeliveryFailed, KafkaException, BufferError) as exc:
            raise AuditUnavailable(f"{self.topic.name}: {exc}") from exc
        if self.producer.delivered <= before:  # dropped: the producer's queue was full
            raise AuditUnavailable(f"{self.topic.name}: the record was not delivered")


def kafka_trail(settings: PolicySettings) -> AuditTrail:
    """The trail on Kafka, once the broker has shown that the topic exists.

    Never creates the topic (``popshift topics create`` does, with its retention): a record
    written to a topic auto-created with the broker's defaults could be deleted within days.
    """
    topic = settings.topic(topics.POLICY_AUDIT)
    timeout_s = settings.policy_audit_timeout_s
    kafka = settings.kafka()
    admin = AdminClient(kafka.config())
    try:
        meta = admin.list_topics(topic.name, timeout=timeout_s).topics.get(topic.name)
    except KafkaException as exc:
        raise AuditUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    if meta is None or meta.error is not None:
        raise AuditUnavailable(
            f"topic {topic.name} does not exist (`popshift topics create` creates it)"
        )
    producer = TypedProducer(
        kafka,
        {
            "allow.auto.create.topics": False,
            # A record not acknowledged in time fails for good, rather than sitting in the
            # queue of a process that is about to exit and report the change refused.
            "message.timeout.ms": int(timeout_s * 1000),
            "linger.ms": 0,
        },
    )
    # Flush a little longer than the message timeout, so each record ends delivered or failed.
    return AuditTrail(producer, topic, timeout_s + 1.0)


def read_trail(settings: PolicySettings, pop: str | None = None) -> list[PolicyAudit]:
    """Every record, oldest first; with ``pop``, those naming it and every ``clear --all``."""
    records: list[PolicyAudit] = read_all(
        settings.kafka(),
        settings.topic(topics.POLICY_AUDIT),
        timeout_s=max(settings.policy_audit_timeout_s, 5.0),
    )
    return [r for r in records if pop is None or not r.pops or pop in r.pops]


def _change_text(c: OverrideChange) -> str:
    mark = {"added": "+", "removed": "-", "changed": "~"}[c.change]
    if c.kind == "drain":
        return f"{mark} drain {c.pop}"
    if c.kind == "forbid":
        return f"{mark} forbid {c.source}->{c.destination}"
    shares = " -> ".join(f"{x:.1%}" for x in (c.share_before, c.share_after) if x is not None)
    return f"{mark} pin {c.source}->{c.destination} tier {c.tier} {shares}"


def describe(record: PolicyAudit) -> str:
    """A record as ``popshift policy log`` prints it: one line, then the why, changes, error."""
    at = datetime.fromtimestamp(record.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = " ".join(
        f"{k}={v}" for k, v in record.arguments.items() if v is not None and v is not False
    )
    lines = [
        f"{at} {record.outcome.value:9} {record.action} {args} by {record.by} "
        f"({record.os_user}@{record.host} pid {record.pid}) id {record.id[:12]}",
        f"    why: {record.reason}",
    ]
    if record.outcome is not AuditOutcome.APPLIED:
        lines += [f"    {_change_text(c)}" for c in record.changes]
    if record.error is not None:
        lines.append(f"    error: {record.error}")
    return "\n".join(lines)
