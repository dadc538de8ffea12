"""Operator overrides: pin a share, forbid a pair, drain a PoP.

They come from two places, merged: a YAML file (``POPSHIFT_POLICY_OVERRIDES_FILE``, reviewed
config) and the ``popshift policy pin|forbid|drain|clear`` commands, which keep theirs in Redis
(see :mod:`services.policy_engine.cli`) so they survive an engine restart. Validation against
the network happens here, once, so the solver never sees an unknown PoP or a tier whose pins add
up to more than all of its traffic, nor a pin that every table writer would refuse (a tier that
may not be forwarded, a pair beyond the tier's latency bound: popshift/admission.py).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from popshift.admission import Refused, check_share
from popshift.network import NetworkConfig
from schemas.messages import Fraction, PopName, Tier


class InvalidOverride(ValueError):
    """An override names an unknown PoP or tier, pins more than a tier's whole traffic, or pins
    a share the network does not allow."""


class Pin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: PopName
    destination: PopName
    tier: Tier
    share: Fraction


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: PopName
    destination: PopName


class Overrides(BaseModel):
    """The operator's word; always wins over the solver and skips damping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pins: list[Pin] = Field(default_factory=list)
    forbid: list[Forbid] = Field(default_factory=list)
    drain: list[PopName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _pins_fit(self) -> Overrides:
        seen: set[tuple[int, str, str]] = set()
        totals: dict[tuple[int, str], float] = {}
        for p in self.pins:
            if p.source == p.destination:
                raise ValueError(f"pins: {p.source} cannot forward to itself")
            if (p.tier, p.source, p.destination) in seen:
                raise ValueError(f"pins: duplicate {p.source}->{p.destination} tier {p.tier}")
            seen.add((p.tier, p.source, p.destination))
            totals[(p.tier, p.source)] = totals.get((p.tier, p.source), 0.0) + p.share
        for (tier, src), total in totals.items():
            if total > 1.0 + 1e-9:
                raise ValueError(f"pins: {src} tier {tier} pinned {total:.3f} > 1")
        return self

    @property
    def pinned(self) -> dict[tuple[int, str, str], float]:
        return {(p.tier, p.source, p.destination): p.share for p in self.pins}

    @property
    def forbidden(self) -> frozenset[tuple[str, str]]:
        return frozenset((f.source, f.destination) for f in self.forbid)

    def merged(self, other: Overrides) -> Overrides:
        """``other`` (the later, e.g. CLI) wins for the same pinned (tier, source, destination)."""
        pins = {(p.tier, p.source, p.destination): p for p in self.pins}
        pins.update({(p.tier, p.source, p.destination): p for p in other.pins})
        return Overrides(
            pins=list(pins.values()),
            forbid=list(dict.fromkeys([*self.forbid, *other.forbid])),
            drain=list(dict.fromkeys([*self.drain, *other.drain])),
        )

    def check(self, network: NetworkConfig) -> Overrides:
        """Raise :class:`InvalidOverride` unless every PoP and tier named exists and every pin
        that moves traffic keeps its tier's rules: the tier is forwardable and the destination
        within its ``max_added_latency_ms`` (an unknown latency is not within it). A pin that
        broke them would reach the table writer, which refuses the whole policy and so freezes
        the source's tables (services/table_writer/writer.py); refused here, it is never written.
        """
        pops = set(network.pop_names)
        tiers = {t.id for t in network.tiers}
        named = [p.source for p in self.pins] + [p.destination for p in self.pins]
        named += [f.source for f in self.forbid] + [f.destination for f in self.forbid]
        named += self.drain
        unknown = sorted(set(named) - pops)
        if unknown:
            raise InvalidOverride(f"unknown PoP(s): {', '.join(unknown)}")
        bad_tiers = sorted({p.tier for p in self.pins} - tiers)
        if bad_tiers:
            raise InvalidOverride(f"unknown tier(s): {bad_tiers}")
        for p in self.pins:
            try:
                check_share(network, p.source, p.tier, p.destination, p.share)
            except Refused as exc:
                raise InvalidOverride(f"pins: {exc}") from exc
        return self


def load_overrides(path: str | Path | None) -> Overrides:
    """The file's overrides; no file configured means none."""
    if not path:
        return Overrides()
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    try:
        return Overrides.model_validate(data)
    except ValueError as exc:
        raise InvalidOverride(f"{path}: {exc}") from exc
