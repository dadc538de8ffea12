"""Every message popshift puts on Kafka (the forwarding-table bucket is in schemas/bucket.py).

Strict on purpose: a message that would make a service compute with NaN, a negative load or an
unknown field is rejected at the edge and dead-lettered with the reason, never half-processed.
Each message carries ``schema_version`` so that a consumer can refuse what it does not understand.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_SERVERS_PER_POP = 4096
MAX_SHARES_PER_POLICY = 1024
MAX_TIERS = 16
MAX_REASON_CHARS = 512

PopName = Annotated[
    str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
ServerName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
Tier = Annotated[int, Field(ge=0, lt=MAX_TIERS)]
Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Cores = Annotated[float, Field(ge=0.0, le=1_000_000.0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0.0, le=3_600_000.0, allow_inf_nan=False)]
Counter = Annotated[int, Field(ge=0, lt=2**64)]

_CANONICAL_IPS: dict[str, str] = {}
_CANONICAL_IPS_MAX = 1 << 17  # a few times every server of the largest deployment


def _canonical_ip(value: Any) -> str:
    """An IPv4 or IPv6 address in its canonical text form, as ``IPvAnyAddress`` would print it.

    Parsing an address costs microseconds and every feedback message carries one, while a
    server's address rarely changes: the canonical form of each text seen is remembered.
    """
    if type(value) is str:
        canonical = _CANONICAL_IPS.get(value)
        if canonical is not None:
            return canonical
    try:
        canonical = str(ipaddress.ip_address(value))
    except (ValueError, TypeError):
        raise PydanticCustomError(
            "ip_any_address", "value is not a valid IPv4 or IPv6 address"
        ) from None
    if type(value) is str:
        if len(_CANONICAL_IPS) >= _CANONICAL_IPS_MAX:
            _CANONICAL_IPS.clear()
        _CANONICAL_IPS[value] = canonical
    return canonical


IpAddress = Annotated[
    str,
    PlainValidator(_canonical_ip),
    WithJsonSchema({"format": "ipvanyaddress", "type": "string"}),
]
"""What ``IPvAnyAddress`` accepts, kept as its canonical text: same wire form, parsed once."""


class Message(BaseModel):
    """Base of every message: frozen, unknown fields rejected, no NaN or infinity anywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1


class ServiceQos(Message):
    """Latency of the local health probe over one interval, as the agent measured it."""

    probes: int = Field(ge=0, le=100_000)
    success_rate: Fraction
    latency_p50_ms: Millis | None = None
    latency_p95_ms: Millis | None = None

    @model_validator(mode="after")
    def _percentiles_ordered(self) -> ServiceQos:
        p50, p95 = self.latency_p50_ms, self.latency_p95_ms
        if p50 is not None and p95 is not None and p95 < p50:
            raise ValueError("latency_p95_ms must be >= latency_p50_ms")
        return self


class ServerHeartbeat(Message):
    """feedback.v1 from one compute server's agent (patent (29), (42), (80)-(81))."""

    kind: Literal["server"] = "server"
    pop: PopName
    server: ServerName
    address: IpAddress
    seq: int = Field(ge=0, lt=2**63)
    sent_at: Seconds
    capacity_cores: Cores = Field(gt=0.0)
    cpu_busy_cores: Cores
    qos: ServiceQos | None = None
    interval_s: float | None = Field(None, gt=0.0, le=3600.0, allow_inf_nan=False)
    """The agent's heartbeat interval, so the ingest's liveness needs no setting to match it;
    None (older agents): the ingest's POPSHIFT_HEARTBEAT_INTERVAL_S."""

    @model_validator(mode="after")
    def _busy_within_capacity(self) -> ServerHeartbeat:
        # A little slack for sampling jitter; beyond it the agent is broken or lying.
        if self.cpu_busy_cores > self.capacity_cores * 1.05:
            raise ValueError(
                f"cpu_busy_cores {self.cpu_busy_cores} exceeds capacity_cores {self.capacity_cores}"
            )
        return self


class ServerLoad(Message):
    """One server's load inside a per-PoP message."""

    server: ServerName
    address: IpAddress
    capacity_cores: Cores = Field(gt=0.0)
    utilisation: Fraction
    healthy: bool = True
    last_seen: Seconds = 0.0
    qos: ServiceQos | None = None
    seq_first: int | None = Field(
        None, ge=0, lt=2**63, description="first heartbeat sequence aggregated into this report"
    )
    seq_last: int | None = Field(None, ge=0, lt=2**63, description="... and the last one")
    heartbeats: int = Field(
        0, ge=0, le=1_000_000, description="heartbeats aggregated into this report (seq_first..)"
    )


class PopFeedback(Message):
    """feedback.v1 already aggregated per PoP by a PoP management server (patent (42))."""

    kind: Literal["pop"] = "pop"
    pop: PopName
    seq: int = Field(ge=0, lt=2**63)
    sent_at: Seconds
    servers: list[ServerLoad] = Field(min_length=1, max_length=MAX_SERVERS_PER_POP)


Feedback = Annotated[ServerHeartbeat | PopFeedback, Field(discriminator="kind")]
FEEDBACK_ADAPTER: TypeAdapter[ServerHeartbeat | PopFeedback] = TypeAdapter(Feedback)


class PopLoad(Message):
    """pop-load.v1: one PoP's servers, healthy capacity and combined load at one instant."""

    pop: PopName
    at: Seconds
    servers: list[ServerLoad] = Field(max_length=MAX_SERVERS_PER_POP)
    healthy_capacity_cores: Cores
    combined_load_cores: Cores
    qos_p95_ms: Millis | None = None
    qos_success_rate: Fraction | None = None

    @property
    def utilisation(self) -> float:
        if self.healthy_capacity_cores <= 0.0:
            return 1.0 if self.combined_load_cores > 0.0 else 0.0
        return self.combined_load_cores / self.healthy_capacity_cores


class PopState(StrEnum):
    SHED = "shed"
    CAN_TAKE = "can_take"
    NEUTRAL = "neutral"


class PopStatus(Message):
    """pop-status.v1: the analytics verdict for one PoP (patent (43)-(44), (82)-(83))."""

    pop: PopName
    at: Seconds
    state: PopState
    since: Seconds
    utilisation: Annotated[float, Field(ge=0.0, le=100.0)]
    capacity_cores: Cores
    load_cores: Cores
    excess_cores: Cores = 0.0
    headroom_cores: Cores = 0.0
    rule: Annotated[str, Field(max_length=MAX_REASON_CHARS)] | None = None


class PopStatusRow(NamedTuple):
    """A :class:`PopStatus`'s fields as a plain tuple, for the simulator's rounds: the analytics
    core built them (services/analytics/batch.py), so the bus's validation, a third of a round's
    analytics cost, is left to the messages that cross a bus. ``PopStatus(**row._asdict())``
    is the message (tests/analytics/test_batch.py validates every row that way)."""

    pop: str
    at: float
    state: PopState
    since: float
    utilisation: float
    capacity_cores: float
    load_cores: float
    excess_cores: float = 0.0
    headroom_cores: float = 0.0
    rule: str | None = None


class PolicyAction(StrEnum):
    NEW = "new"
    UPDATE = "update"
    CANCEL = "cancel"


class Share(Message):
    """Forward ``share`` of ``tier``'s native traffic to ``destination``."""

    tier: Tier
    destination: PopName
    share: Fraction


class PolicyReason(Message):
    """Why a policy exists: the PoP and rule that triggered it and the loads expected after."""

    trigger_pop: PopName
    rule: Annotated[str, Field(max_length=MAX_REASON_CHARS)]
    expected_utilisation: dict[PopName, Annotated[float, Field(ge=0.0, le=100.0)]] = Field(
        default_factory=dict, max_length=MAX_SHARES_PER_POLICY
    )
    infeasible: bool = False


class PolicyEvent(Message):
    """policies.v1 (compacted, key = source PoP): the whole current policy of one source PoP."""

    action: PolicyAction
    source: PopName
    version: int = Field(ge=1, lt=2**63)
    epoch: int = Field(0, ge=0, lt=2**63)
    """The engine's leadership epoch (docs/failure.md#one-writer-per-thing): a writer orders
    policies by (epoch, version) and refuses a newer version from an older epoch (a deposed
    engine still talking). 0: an engine without leader election (the simulator)."""
    issued_at: Seconds
    expires_at: Seconds | None = None
    """The policy's lease: after this its table writer drops the shares back to local unless a
    newer version came (the engine renews a policy every tick while its inputs are fresh;
    docs/failure.md). None: no lease, from an engine before leases."""
    shares: list[Share] = Field(default_factory=list, max_length=MAX_SHARES_PER_POLICY)
    reason: PolicyReason

    @model_validator(mode="after")
    def _consistent(self) -> PolicyEvent:
        if self.expires_at is not None and self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.action is PolicyAction.CANCEL and self.shares:
            raise ValueError("shares: a cancel carries no shares")
        seen: set[tuple[int, str]] = set()
        per_tier: dict[int, float] = {}
        for s in self.shares:
            if s.destination == self.source:
                raise ValueError(f"shares: {self.source} cannot forward to itself")
            if (s.tier, s.destination) in seen:
                raise ValueError(f"shares: duplicate (tier {s.tier}, {s.destination})")
            seen.add((s.tier, s.destination))
            per_tier[s.tier] = per_tier.get(s.tier, 0.0) + s.share
        for tier, total in per_tier.items():
            if total > 1.0 + 1e-9:
                raise ValueError(f"shares: tier {tier} forwards {total:.4f} > 1 of its traffic")
        return self


class TableUpdate(Message):
    """table-updates.v1: a table writer wrote a new table version for one PoP x tier to Redis."""

    pop: PopName
    tier: Tier
    version: int = Field(ge=1, lt=2**63)
    policy_version: int = Field(ge=0, lt=2**63)
    buckets_changed: int = Field(ge=0, le=1 << 24)
    written_at: Seconds
    buckets: int = Field(0, ge=0, le=1 << 24, description="the table's size (0: not said)")
    buckets_away: dict[PopName, Annotated[int, Field(ge=0, le=1 << 24)]] = Field(
        default_factory=dict,
        max_length=MAX_SHARES_PER_POLICY,
        description="buckets whose new connections go to each peer PoP",
    )


class TierCounters(Message):
    """Packets per verdict for one tier, monotonic since the node started."""

    tier: Tier
    local: Counter = 0
    intra_pop_forward: Counter = 0
    inter_pop_forward: Counter = 0
    second_chance_forward: Counter = 0
    received_from_peer: Counter = 0
    dropped: dict[Annotated[str, Field(max_length=32)], Counter] = Field(
        default_factory=dict, max_length=32
    )


class DataplaneStats(Message):
    """dataplane-stats.v1: a forwarder's per-tier counters (input to native-demand estimates)."""

    pop: PopName
    node: ServerName
    at: Seconds
    tiers: list[TierCounters] = Field(max_length=MAX_TIERS)


class DeadLetter(Message):
    """What a consumer could not accept: the reason, where it came from, and the original bytes."""

    source_topic: Annotated[str, Field(max_length=249)]
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    reason: Annotated[str, Field(max_length=4096)]
    key_b64: Annotated[str, Field(max_length=4096)] | None = None
    payload_b64: str
    at: Seconds

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason must not be blank")
        return v


class AuditOutcome(StrEnum):
    REQUESTED = "requested"  # written, and confirmed by Kafka, before Redis is touched
    APPLIED = "applied"
    FAILED = "failed"  # Redis refused or lost the change, or another operator got in between
    REFUSED = "refused"  # the change broke a rule (services/policy_engine/overrides.py)


ChangeKind = Literal["added", "removed", "changed"]


class OverrideChange(Message):
    """One override that a command adds, removes or changes (the share of a pin)."""

    change: ChangeKind
    kind: Literal["pin", "forbid", "drain"]
    source: PopName | None = None
    destination: PopName | None = None
    pop: PopName | None = None
    """The drained PoP."""
    tier: Tier | None = None
    share_before: Fraction | None = None
    share_after: Fraction | None = None


AuditText = Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)]
OverridesJson = Annotated[str, Field(max_length=1_048_576)]


class PolicyAudit(Message):
    """policy-audit.v1 (append-only): one step of one ``popshift policy pin|forbid|drain|clear``.

    A command writes ``requested`` before it changes Redis, then ``applied`` or ``failed``, both
    under the same ``id``; a change refused by the rules writes one ``refused`` record.
    """

    id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    at: Seconds
    outcome: AuditOutcome
    action: Literal["pin", "forbid", "drain", "clear"]
    arguments: dict[Annotated[str, Field(max_length=32)], str | int | float | bool | None] = Field(
        default_factory=dict, max_length=16
    )
    pops: list[PopName] = Field(default_factory=list, max_length=2)
    """The PoPs the command names; empty for ``clear --all`` (every PoP)."""
    reason: AuditText
    by: AuditText
    """Who the operator says they are (``--by``, default the OS user)."""
    os_user: AuditText
    """The user the command ran as (from its uid, not from the environment)."""
    host: AuditText
    pid: int = Field(ge=0, lt=2**32)
    before: OverridesJson | None = None
    """The overrides document as Redis held it (None: no overrides key)."""
    after: OverridesJson | None = None
    """The document written, or that would have been (None with ``refused`` and ``failed``
    before a document could be computed)."""
    changes: list[OverrideChange] = Field(default_factory=list, max_length=10_000)
    error: AuditText | None = None

    @field_validator("reason", "by")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @model_validator(mode="after")
    def _error_iff_failed(self) -> PolicyAudit:
        failed = self.outcome in (AuditOutcome.FAILED, AuditOutcome.REFUSED)
        if failed != (self.error is not None):
            raise ValueError("error: given with failed and refused records, and only with them")
        return self


ALL_MODELS: dict[str, type[BaseModel]] = {
    "feedback-server": ServerHeartbeat,
    "feedback-pop": PopFeedback,
    "pop-load": PopLoad,
    "pop-status": PopStatus,
    "policy-event": PolicyEvent,
    "table-update": TableUpdate,
    "dataplane-stats": DataplaneStats,
    "dead-letter": DeadLetter,
    "policy-audit": PolicyAudit,
}
