"""The topic registry: every Kafka topic popshift uses, its key, layout and dead-letter topic.

Kafka topics are the integration points between services, so they are declared once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from schemas import messages as m

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    adapter: TypeAdapter[Any]
    cleanup_policy: str = "delete"
    retention_ms: int = DAY_MS
    partitions: int | None = None  # None: the configured default
    broker_time: bool = False
    """Records stamped by the broker when it appends them (LogAppendTime): one clock for
    every producer, as the ingest's liveness needs (services/feedback_ingest/clock.py)."""

    @property
    def dead_letter(self) -> str:
        base = self.name.removesuffix(".v1")
        return f"{base}.dlq.v1"


FEEDBACK = Topic(
    "feedback.v1", "PoP name", m.FEEDBACK_ADAPTER, retention_ms=3600 * 1000, broker_time=True
)
POP_LOAD = Topic("pop-load.v1", "PoP name", TypeAdapter(m.PopLoad), retention_ms=3600 * 1000)
POP_STATUS = Topic("pop-status.v1", "PoP name", TypeAdapter(m.PopStatus))
POLICIES = Topic(
    "policies.v1", "source PoP name", TypeAdapter(m.PolicyEvent), cleanup_policy="compact"
)
TABLE_UPDATES = Topic("table-updates.v1", "PoP name", TypeAdapter(m.TableUpdate))
DATAPLANE_STATS = Topic(
    "dataplane-stats.v1", "PoP name", TypeAdapter(m.DataplaneStats), retention_ms=3600 * 1000
)
# The operators' audit trail (services/policy_engine/audit.py). Append-only: deleted by age,
# never compacted (compaction would keep only the last record per key). 400 days keeps a full
# year of history, as audit reviews ask, with room for the review itself, and still bounds the
# disk (a record is ~1 KB). One partition: the whole trail in one order.
POLICY_AUDIT = Topic(
    "policy-audit.v1",
    "first PoP named, or 'all'",
    TypeAdapter(m.PolicyAudit),
    retention_ms=400 * DAY_MS,
    partitions=1,
)

ALL_TOPICS: tuple[Topic, ...] = (
    FEEDBACK,
    POP_LOAD,
    POP_STATUS,
    POLICIES,
    TABLE_UPDATES,
    DATAPLANE_STATS,
    POLICY_AUDIT,
)
DEAD_LETTER_RETENTION_MS = 7 * DAY_MS


def by_name(name: str) -> Topic:
    for topic in ALL_TOPICS:
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}")


def topic_configs(topic: Topic) -> dict[str, str]:
    out = {"cleanup.policy": topic.cleanup_policy, "retention.ms": str(topic.retention_ms)}
    if topic.broker_time:
        out["message.timestamp.type"] = "LogAppendTime"
    return out
