"""The network's static description: PoPs, traffic tiers and PoP-to-PoP latency.

Every service that needs to know which PoPs exist reads it from one YAML file
(``POPSHIFT_NETWORK_FILE``), so ingest, analytics, the policy engine and the table writers agree.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, model_validator

from schemas.messages import PopName, Tier


class PopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PopName
    id: int = Field(ge=1, lt=2**16, description="numeric id carried in the GUE header")
    ingress: IPvAnyAddress = Field(description="address peers encapsulate to (decap unit)")
    target_utilisation: float = Field(0.8, gt=0.0, le=1.0)


class TierRule(BaseModel):
    """May a tier be forwarded, how much latency it may take, and in which order it moves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Tier
    name: str = Field(min_length=1, max_length=32)
    forwardable: bool = True
    max_added_latency_ms: float = Field(50.0, ge=0.0, allow_inf_nan=False)
    priority: int = Field(0, ge=0, description="lower priority moves first")
    hash_addresses_only: bool = Field(False, description="bucket by src/dst address only (63)")


class NetworkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pops: list[PopConfig] = Field(min_length=1, max_length=10_000)
    tiers: list[TierRule] = Field(min_length=1, max_length=16)
    latency_ms: dict[PopName, dict[PopName, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> NetworkConfig:
        names = [p.name for p in self.pops]
        if len(set(names)) != len(names):
            raise ValueError("pops: names must be unique")
        if len({p.id for p in self.pops}) != len(self.pops):
            raise ValueError("pops: ids must be unique")
        if len({t.id for t in self.tiers}) != len(self.tiers):
            raise ValueError("tiers: ids must be unique")
        known = set(names)
        for src, row in self.latency_ms.items():
            for dst, ms in row.items():
                if src not in known or dst not in known:
                    raise ValueError(f"latency_ms: unknown PoP in {src}->{dst}")
                if not 0.0 <= ms < 10_000.0:
                    raise ValueError(f"latency_ms: {src}->{dst} = {ms} out of range")
        return self

    @property
    def pop_names(self) -> list[str]:
        return [p.name for p in self.pops]

    def pop(self, name: str) -> PopConfig:
        for p in self.pops:
            if p.name == name:
                return p
        raise KeyError(f"unknown PoP {name!r}")

    def latency(self, src: str, dst: str) -> float | None:
        """One-way added latency src->dst in ms (symmetric if only one direction is given)."""
        if src == dst:
            return 0.0
        forward = self.latency_ms.get(src, {}).get(dst)
        return forward if forward is not None else self.latency_ms.get(dst, {}).get(src)


def load_network(path: str | Path) -> NetworkConfig:
    with open(path) as f:
        return NetworkConfig.model_validate(yaml.safe_load(f))
