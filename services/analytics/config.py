"""Per-PoP identification rules and hysteresis, as configuration (patent (43)-(44), (82)-(83)).

The patent names several ways to decide that a PoP must shed or can take traffic; which ones apply,
and with which thresholds, differs per PoP (hardware, service mix). So they are data, read from
``deploy/config/analytics.yaml``: ``defaults`` plus a partial override per PoP.

Every threshold is a band: ``enter`` is crossed to enter a state, ``exit`` to leave it. For shed
rules ``exit < enter``; for can-take rules ``exit > enter``. A load inside the band keeps the
current state, so a PoP does not flap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Band(_Strict):
    """Enter and exit thresholds of one rule (utilisation 0..1, or milliseconds for QoS)."""

    enter: float = Field(ge=0.0)
    exit: float = Field(ge=0.0)


class CountBand(Band):
    """A per-server threshold that must hold on at least ``min_count`` or ``min_fraction``."""

    min_count: int | None = Field(None, ge=1)
    min_fraction: float | None = Field(None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _has_quorum(self) -> CountBand:
        if self.min_count is None and self.min_fraction is None:
            raise ValueError("set min_count or min_fraction (or both: either suffices)")
        return self


class ShedRules(_Strict):
    """Any configured rule firing makes a PoP shed (patent (43), (82)); unset = disabled."""

    any_server_over: Band | None = None
    servers_over: CountBand | None = None
    combined_over: Band | None = None
    qos_p95_over_ms: Band | None = None

    @model_validator(mode="after")
    def _exit_below_enter(self) -> ShedRules:
        for name in type(self).model_fields:
            band = getattr(self, name)
            if band is not None and band.exit > band.enter:
                raise ValueError(f"{name}: a shed rule needs exit <= enter")
        return self


class CanTakeRules(_Strict):
    """The mirror rules (patent (44), (83)); every configured one must hold for can-take.

    All, not any: sending a PoP more traffic on one optimistic signal is the costlier mistake.
    """

    any_server_under: Band | None = None
    servers_under: CountBand | None = None
    combined_under: Band | None = None
    qos_p95_under_ms: Band | None = None

    @model_validator(mode="after")
    def _exit_above_enter(self) -> CanTakeRules:
        for name in type(self).model_fields:
            band = getattr(self, name)
            if band is not None and band.exit < band.enter:
                raise ValueError(f"{name}: a can-take rule needs exit >= enter")
        return self

    @property
    def empty(self) -> bool:
        return all(getattr(self, n) is None for n in type(self).model_fields)


class PopRules(_Strict):
    """Everything analytics needs to judge one PoP."""

    window_s: float = Field(10.0, gt=0.0, description="pop-load samples averaged per verdict")
    min_dwell_s: float = Field(
        15.0, ge=0.0, description="least time in a state before leaving it (entering shed excepted)"
    )
    refresh_s: float = Field(
        5.0, gt=0.0, description="re-emit an unchanged status this often, with fresh headroom"
    )
    target_utilisation: float = Field(
        0.75,
        gt=0.0,
        le=1.0,
        description="excess and headroom are measured against this; network.yaml's per-PoP "
        "target_utilisation replaces it for the PoPs it lists",
    )
    shed: ShedRules = ShedRules(
        any_server_over=Band(enter=0.97, exit=0.9),
        combined_over=Band(enter=0.85, exit=0.75),
    )
    can_take: CanTakeRules = CanTakeRules(combined_under=Band(enter=0.6, exit=0.7))


class AnalyticsConfig(_Strict):
    """``defaults`` apply to every PoP; ``pops`` override them field by field."""

    defaults: PopRules = PopRules()
    pops: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _overrides_valid(self) -> AnalyticsConfig:
        for pop in self.pops:
            self.for_pop(pop)  # raises on a bad override, at load time not at the first message
        return self

    def for_pop(self, pop: str) -> PopRules:
        override = self.pops.get(pop)
        if not override:
            return self.defaults
        return PopRules.model_validate(_merge(self.defaults.model_dump(), override))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; an explicit ``null`` in the override disables that rule."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path) -> AnalyticsConfig:
    with open(path) as f:
        return AnalyticsConfig.model_validate(yaml.safe_load(f) or {})
