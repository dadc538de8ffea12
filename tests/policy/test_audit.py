"""The audit trail's pure parts: the diff, the record's rules, its text, and a trail that never
reports an unconfirmed record as written (services/policy_engine/audit.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from popshift import topics
from popshift.bus import DeliveryFailed, MemoryBus, MemoryProducer
from schemas.messages import PolicyAudit
from services.policy_engine.audit import AuditTrail, AuditUnavailable, changes, describe
from services.policy_engine.overrides import Forbid, Overrides, Pin
from tests.samples import AUDIT


def test_changes_name_what_was_added_removed_and_changed() -> None:
    before = Overrides(
        pins=[
            Pin(source="a", destination="b", tier=0, share=0.2),
            Pin(source="b", destination="c", tier=0, share=0.1),
        ],
        forbid=[Forbid(source="b", destination="c")],
        drain=["c"],
    )
    after = Overrides(
        pins=[
            Pin(source="a", destination="b", tier=0, share=0.3),
            Pin(source="a", destination="b", tier=1, share=0.1),
        ],
        drain=["a"],
    )
    got = [
        (c.change, c.kind, c.source, c.destination, c.pop, c.tier) for c in changes(before, after)
    ]
    assert got == [
        ("changed", "pin", "a", "b", None, 0),
        ("removed", "pin", "b", "c", None, 0),
        ("added", "pin", "a", "b", None, 1),
        ("removed", "forbid", "b", "c", None, None),
        ("removed", "drain", None, None, "c", None),
        ("added", "drain", None, None, "a", None),
    ]
    pinned = changes(before, after)[0]
    assert (pinned.share_before, pinned.share_after) == (0.2, 0.3)
    assert changes(after, after) == []


def test_a_record_carries_an_error_exactly_when_it_failed() -> None:
    data = AUDIT.model_dump()
    with pytest.raises(ValidationError, match="error"):
        PolicyAudit.model_validate({**data, "outcome": "refused"})
    with pytest.raises(ValidationError, match="error"):
        PolicyAudit.model_validate({**data, "error": "boom"})
    with pytest.raises(ValidationError, match="reason"):
        PolicyAudit.model_validate({**data, "reason": "   "})
    PolicyAudit.model_validate({**data, "outcome": "failed", "error": "boom"})


def test_describe_says_who_why_and_what() -> None:
    text = describe(AUDIT)
    assert "requested pin source=ams destination=fra tier=0 share=0.25" in text
    assert "by alice (alice@ops-1 pid 4242)" in text
    assert "why: ams maintenance window" in text
    assert "+ pin ams->fra tier 0 25.0%" in text


class Unconfirmed(MemoryProducer):
    """A producer whose broker never acknowledges."""

    def flush(self, timeout: float = 30.0) -> None:
        raise DeliveryFailed("1 messages not delivered within 1s", undelivered=1)


def test_the_trail_reports_an_unconfirmed_or_dropped_record_as_unavailable() -> None:
    bus = MemoryBus()
    trail = AuditTrail(Unconfirmed(bus), topics.POLICY_AUDIT, 1.0)
    with pytest.raises(AuditUnavailable, match="not delivered"):
        trail.write(AUDIT)
    dropping = MemoryProducer(bus)
    dropping.send_raw = lambda *a, **k: None  # type: ignore[method-assign]
    with pytest.raises(AuditUnavailable, match="not delivered"):
        AuditTrail(dropping, topics.POLICY_AUDIT, 1.0).write(AUDIT)
    confirmed = MemoryBus()
    AuditTrail(MemoryProducer(confirmed), topics.POLICY_AUDIT, 1.0).write(AUDIT)
    assert confirmed.replay(topics.POLICY_AUDIT) == [AUDIT]
