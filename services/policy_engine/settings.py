"""Settings of the policy engine, read from POPSHIFT_* variables; each description documents one.

The defaults suit the lab: re-solve every second, move a share by at most 10 points per round,
then wait 15 s for the change to show in the load (only new connections move).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from popshift.leadership import ENGINE_LEADER_KEY
from popshift.settings import Settings
from services.policy_engine.damping import DampingConfig
from services.policy_engine.engine import EngineConfig
from services.policy_engine.solver import Budget


class PolicySettings(Settings):
    """policy_engine: pop-status.v1 + dataplane-stats.v1 in, policies.v1 out."""

    default_principal: ClassVar[str] = "engine"
    default_metrics_port: ClassVar[int] = 9464

    policy_group: str = Field(
        "popshift-policy-engine", description="Kafka consumer group of the policy engine."
    )
    policy_tick_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="How often the engine re-solves and emits changes."
    )
    policy_lease_s: float = Field(
        15.0,
        gt=0.0,
        description="How long a policy is in force after it is issued unless renewed (the "
        "engine renews it after a third of that while its inputs are fresh); longer than a "
        "leader failover (POPSHIFT_POLICY_LEADER_TTL_S + a tick + start-up), so a failover "
        "changes nothing and a dead control plane goes back to anycast within it.",
    )
    policy_leader_key: str = Field(
        ENGINE_LEADER_KEY,
        description="Redis key of the engines' leader lock (its epoch at '<key>:epoch'); one "
        "engine per network publishes policies, any others wait as warm standbys.",
    )
    policy_leader_ttl_s: float = Field(
        5.0,
        gt=0.0,
        description="The leader lock expires this long after the leader's last renewal (it "
        "renews every tick): the longest a killed leader's standby waits to take over.",
    )
    policy_max_exact_arcs: int = Field(
        Budget.max_exact_arcs,
        ge=0,
        description="Largest candidate graph (arcs) solved exactly by the LP; above it the "
        "greedy answer is used. A size, not a time, so one input gives one decision.",
    )
    policy_max_lp_iterations: int = Field(
        Budget.max_lp_iterations,
        ge=1,
        description="Simplex iterations one LP solve may take; an LP that needs more gives way "
        "to the greedy answer.",
    )
    policy_status_max_age_s: float = Field(
        30.0,
        gt=0.0,
        description="A PoP without a pop-status this recent is left out of the solve (and its "
        "own policy kept as it is).",
    )
    policy_stats_max_age_s: float = Field(
        30.0, gt=0.0, description="Forwarder counters older than this are not used."
    )
    policy_effect_lag_s: float = Field(
        5.0,
        ge=0.0,
        description="Without counters: a load measured at t shows the policies issued before "
        "t minus this lag.",
    )
    policy_resolve_band: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="The engine reuses its last solve while every PoP's estimate stays within "
        "this share of its capacity of the one then (and no flag, override, capacity or "
        "integral moved); 0: solve every tick.",
    )
    policy_reach_after_s: float | None = Field(
        None,
        gt=0.0,
        description="Measure how much of a tier's demand a share in force really moves (new "
        "connections only move; long-lived ones stay) once it held still this long, and solve "
        "on that; about the lifetime of most new connections. Unset: a share moves its whole "
        "part (right when connections are short next to the engine's reaction).",
    )
    policy_deadband: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share changes smaller than this are not made (relief excepted: "
        "POPSHIFT_POLICY_RELIEF_DEADBAND).",
    )
    policy_relief_deadband: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="A flagged PoP's share, and its relays' onward shares, grow by as little as "
        "this, at once (no step cap, no hold-off).",
    )
    policy_max_step: float = Field(
        0.10, gt=0.0, le=1.0, description="Largest change of one share in one round."
    )
    policy_holdoff_s: float = Field(
        15.0,
        ge=0.0,
        description="After a source PoP's policy changed, it is not changed again for this long.",
    )
    policy_keep_margin: float = Field(
        0.10,
        ge=0.0,
        description="A policy is kept while its source is expected within this much "
        "utilisation above its target (and not flagged), even if a better one exists.",
    )
    policy_give_back_margin: float = Field(
        0.10,
        ge=0.0,
        description="... and within this much below its target, by the estimate or by the "
        "measured utilisation (it gives back only when both are lower).",
    )
    policy_receiver_margin: float = Field(
        0.08,
        ge=0.0,
        description="... and every destination is expected within this much above its target.",
    )
    policy_calibrate_below: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="A PoP's cores per packet is learned only below this utilisation (a "
        "saturated PoP's measured load is capped).",
    )
    policy_integral_gain: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of a flagged PoP's measured excess added, per pop-status, to how far "
        "below its target the solver aims, while its shares hold still and it stays flagged.",
    )
    policy_max_boost: float = Field(
        0.10,
        ge=0.0,
        le=1.0,
        description="The integral action lowers a PoP's target by at most this share of its "
        "capacity.",
    )
    policy_hop_cost_ms: float = Field(
        1.0,
        ge=0.0,
        description="Cost of a forwarding hop on top of its latency, so nothing moves in vain.",
    )
    policy_max_candidates: int | None = Field(
        16,
        ge=1,
        description="Receivers kept per sender (the nearest within the tier's bound); None = all.",
    )
    policy_tier_mix: dict[int, float] = Field(
        default_factory=dict,
        description="Without counters, a PoP's load is split over tiers by these weights "
        '(JSON, e.g. {"0": 0.5, "1": 0.3}); empty = equal.',
    )
    policy_overrides_file: str | None = Field(
        None, description="YAML of operator overrides (pins, forbid, drain); unset = none."
    )
    policy_overrides_key: str = Field(
        "popshift:policy:overrides",
        description="Redis key (at POPSHIFT_REDIS_URL) of the `popshift policy` overrides.",
    )
    policy_audit_timeout_s: float = Field(
        10.0,
        gt=0.0,
        le=300.0,
        description="How long `popshift policy pin|forbid|drain|clear` waits for Kafka to "
        "reach it and confirm its audit record (policy-audit.v1) before it refuses the change.",
    )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            solve_budget=Budget(self.policy_max_exact_arcs, self.policy_max_lp_iterations),
            tick_s=self.policy_tick_s,
            lease_s=self.policy_lease_s,
            bus_silence_s=self.bus_silence_s,
            bus_outage_grace_s=self.bus_outage_grace_s,
            status_max_age_s=self.policy_status_max_age_s,
            stats_max_age_s=self.policy_stats_max_age_s,
            effect_lag_s=self.policy_effect_lag_s,
            reach_after_s=self.policy_reach_after_s,
            resolve_band=self.policy_resolve_band,
            hop_cost_ms=self.policy_hop_cost_ms,
            max_candidates=self.policy_max_candidates,
            tier_mix=dict(self.policy_tier_mix),
            calibrate_below=self.policy_calibrate_below,
            integral_gain=self.policy_integral_gain,
            max_boost=self.policy_max_boost,
            damping=DampingConfig(
                deadband=self.policy_deadband,
                relief_deadband=self.policy_relief_deadband,
                max_step=self.policy_max_step,
                holdoff_s=self.policy_holdoff_s,
                keep_margin=self.policy_keep_margin,
                give_back_margin=self.policy_give_back_margin,
                receiver_margin=self.policy_receiver_margin,
            ),
        )
