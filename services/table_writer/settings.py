"""Settings of a table writer (one process per PoP), read from POPSHIFT_* variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from popshift.leadership import ENGINE_LEADER_KEY
from popshift.settings import Settings


class TableWriterSettings(Settings):
    """table_writer: one PoP's policies.v1 + pop-load.v1 in; Redis tables, table-updates.v1 out."""

    default_metrics_port: ClassVar[int] = 9465

    def who(self) -> str:
        return self.principal or f"writer-{self.table_pop}"

    table_pop: str | None = Field(
        None, description="The PoP whose tables this process writes (a name in network.yaml)."
    )
    table_group_prefix: str = Field(
        "popshift-table-writer",
        description="Consumer group prefix; each PoP's writer uses '<prefix>-<pop>'.",
    )
    table_drain_period_s: float = Field(
        120.0,
        ge=0.0,
        description="How long a drained bucket keeps its secondary (second chance) before it "
        "is cleared; longer than most connections live.",
    )
    table_retain_s: float = Field(
        60.0,
        gt=0.0,
        description="How long a replaced table version stays in Redis for readers still on it.",
    )
    table_tick_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="How often expired drains are looked for."
    )
    table_key_prefix: str = Field(
        "popshift:table", description="Prefix of every table key in Redis."
    )
    table_lock_ttl_s: float = Field(
        5.0,
        gt=0.0,
        description="A PoP's writer lock ('<prefix>:<pop>:writer') expires this long after its "
        "holder's last renewal (every tick); a second writer of the PoP waits for it, and every "
        "table write checks the lock in the same Redis script (fencing).",
    )
    policy_leader_key: str = Field(
        ENGINE_LEADER_KEY,
        description="Redis key of the policy engines' leader lock (the engine's setting of the "
        "same name): a policy from an epoch above '<key>:epoch' is forged and refused; while "
        "that key cannot be read, policies are not checked for it.",
    )
