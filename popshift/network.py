"""The network's static description: PoPs, traffic tiers and PoP-to-PoP latency.

Every service that needs to know which PoPs exist reads it from one YAML file
(``POPSHIFT_NETWORK_FILE``), so ingest, analytics, the policy engine and the table writers agree.
It is also what a message is checked against (popshift/admission.py): which addresses a PoP's
servers may have, how big one may say it is, where each tier may go.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    model_validator,
)

from schemas.messages import PopName, Tier


class PopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: PopName
    id: int = Field(ge=1, lt=2**16, description="numeric id carried in the GUE header")
    ingress: IPvAnyAddress = Field(description="address peers encapsulate to (decap unit)")
    target_utilisation: float = Field(0.8, gt=0.0, le=1.0)
    server_prefixes: list[IPvAnyNetwork] = Field(
        min_length=1,
        max_length=256,
        description="CIDRs holding every compute server of the PoP: feedback or a server list "
        "naming an address outside them is refused, so no message can make the PoP's tables "
        "point at a host that is not one of its servers",
    )
    max_server_cores: float = Field(
        gt=0.0,
        le=1_000_000.0,
        allow_inf_nan=False,
        description="the most cores one server of the PoP may report as its capacity_cores "
        "(cpu_busy_cores is bounded by capacity in schemas/messages.py); a server claiming more "
        "is refused, so one message cannot take more than its share of the PoP's buckets",
    )
    lat: float | None = Field(
        None, ge=-90.0, le=90.0, description="where the PoP is (degrees), for the console's map"
    )
    lon: float | None = Field(None, ge=-180.0, le=180.0, description="... and its longitude")

    def serves(self, address: str) -> bool:
        """Whether ``address`` lies in one of the PoP's server prefixes."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.server_prefixes)


class TierRule(BaseModel):
    """May a tier be forwarded, how much latency it may take, and in which order it moves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Tier
    name: str = Field(min_length=1, max_length=32)
    forwardable: bool = True
    max_added_latency_ms: float = Field(50.0, ge=0.0, allow_inf_nan=False)
    priority: int = Field(0, ge=0, description="lower priority moves first")
    hash_addresses_only: bool = Field(False, description="bucket by src/dst address only (63)")


class _Index:
    """Lookups over one list of PoPs."""

    def __init__(self, pops: list[PopConfig]) -> None:
        self.pops = pops
        self.by_name = {p.name: p for p in pops}
        self.names = tuple(self.by_name)
        self.ingresses = frozenset(str(p.ingress) for p in pops)


_INDEXES: dict[int, _Index] = {}
_INDEXES_MAX = 64  # networks alive at once: one per process, a few in tests and the simulator


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
    def pop_names(self) -> tuple[str, ...]:
        """Every PoP's name, in the config's order (read every engine tick: built once)."""
        return self._indexed().names

    def _indexed(self) -> _Index:
        """The PoPs indexed once per ``pops`` list: kept outside the model, so that equality
        stays the fields' and a model_copy with other PoPs gets its own index."""
        index = _INDEXES.get(id(self.pops))
        if index is None or index.pops is not self.pops:
            if len(_INDEXES) >= _INDEXES_MAX:
                _INDEXES.clear()
            index = _INDEXES[id(self.pops)] = _Index(self.pops)
        return index

    @property
    def by_name(self) -> dict[str, PopConfig]:
        """Every PoP by name (looked up per message: a list scan of 10,000 PoPs is too slow)."""
        return self._indexed().by_name

    @property
    def ingresses(self) -> frozenset[str]:
        """Every PoP's ingress address: never a compute server's (popshift/admission.py)."""
        return self._indexed().ingresses

    def pop(self, name: str) -> PopConfig:
        found = self.by_name.get(name)
        if found is None:
            raise KeyError(f"unknown PoP {name!r}")
        return found

    def tier(self, tier_id: int) -> TierRule | None:
        for t in self.tiers:
            if t.id == tier_id:
                return t
        return None

    def latency(self, src: str, dst: str) -> float | None:
        """One-way added latency src->dst in ms (symmetric if only one direction is given)."""
        if src == dst:
            return 0.0
        forward = self.latency_ms.get(src, {}).get(dst)
        return forward if forward is not None else self.latency_ms.get(dst, {}).get(src)


def load_network(path: str | Path) -> NetworkConfig:
    with open(path) as f:
        return NetworkConfig.model_validate(yaml.safe_load(f))
