"""One valid instance of every message, shared by the schema and Kafka tests."""

from __future__ import annotations

from pydantic import BaseModel

from schemas import messages as m

QOS = m.ServiceQos(probes=10, success_rate=0.9, latency_p50_ms=1.5, latency_p95_ms=4.0)
HEARTBEAT = m.ServerHeartbeat(
    pop="ams",
    server="ams-s1",
    address="192.0.2.11",
    seq=7,
    sent_at=1_764_000_000.25,
    capacity_cores=8.0,
    cpu_busy_cores=3.5,
    qos=QOS,
)
SERVER_LOAD = m.ServerLoad(
    server="ams-s1", address="2001:db8::11", capacity_cores=8.0, utilisation=0.4375, qos=QOS
)
POP_FEEDBACK = m.PopFeedback(pop="ams", seq=3, sent_at=1_764_000_001.0, servers=[SERVER_LOAD])
POP_LOAD = m.PopLoad(
    pop="ams",
    at=1_764_000_001.0,
    servers=[SERVER_LOAD],
    healthy_capacity_cores=8.0,
    combined_load_cores=3.5,
    qos_p95_ms=4.0,
    qos_success_rate=0.9,
)
POP_STATUS = m.PopStatus(
    pop="ams",
    at=1_764_000_002.0,
    state=m.PopState.SHED,
    since=1_764_000_000.0,
    utilisation=0.93,
    capacity_cores=8.0,
    load_cores=7.44,
    excess_cores=0.6,
    rule="combined_load>0.85",
)
POLICY = m.PolicyEvent(
    action=m.PolicyAction.NEW,
    source="ams",
    version=12,
    issued_at=1_764_000_003.0,
    shares=[
        m.Share(tier=0, destination="fra", share=0.25),
        m.Share(tier=1, destination="lhr", share=0.1),
    ],
    reason=m.PolicyReason(
        trigger_pop="ams", rule="combined_load>0.85", expected_utilisation={"ams": 0.8, "fra": 0.6}
    ),
)
TABLE_UPDATE = m.TableUpdate(
    pop="ams", tier=0, version=4, policy_version=12, buckets_changed=16384, written_at=1.0
)
STATS = m.DataplaneStats(
    pop="ams",
    node="ams-edge1",
    at=1_764_000_004.0,
    tiers=[m.TierCounters(tier=0, local=100, inter_pop_forward=25, dropped={"blocklist": 3})],
)
DEAD_LETTER = m.DeadLetter(
    source_topic="feedback.v1",
    partition=0,
    offset=9,
    reason="invalid: x",
    payload_b64="e30=",
    at=2.0,
)
AUDIT = m.PolicyAudit(
    id="0123456789abcdef0123456789abcdef",
    at=1_764_000_005.0,
    outcome=m.AuditOutcome.REQUESTED,
    action="pin",
    arguments={"source": "ams", "destination": "fra", "tier": 0, "share": 0.25},
    pops=["ams", "fra"],
    reason="ams maintenance window",
    by="alice",
    os_user="alice",
    host="ops-1",
    pid=4242,
    before=None,
    after='{"pins":[{"source":"ams","destination":"fra","tier":0,"share":0.25}],'
    '"forbid":[],"drain":[]}',
    changes=[
        m.OverrideChange(
            change="added", kind="pin", source="ams", destination="fra", tier=0, share_after=0.25
        )
    ],
)

ALL_SAMPLES: dict[str, BaseModel] = {
    "feedback-server": HEARTBEAT,
    "feedback-pop": POP_FEEDBACK,
    "pop-load": POP_LOAD,
    "pop-status": POP_STATUS,
    "policy-event": POLICY,
    "table-update": TABLE_UPDATE,
    "dataplane-stats": STATS,
    "dead-letter": DEAD_LETTER,
    "policy-audit": AUDIT,
}
