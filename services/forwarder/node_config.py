"""The node file: what a node's XDP program needs besides the tables, declared in YAML.

``popshift forwarder-sync --node-file FILE`` reads it at start and on every reconcile
(``POPSHIFT_SYNC_RECONCILE_S``), writes the config, VIP, peer, tier and blocklist maps, gives
empty tables their bootstrap servers, and attaches the program itself. Example and every field:
deploy/config/node-example.yaml. A bad file is refused with its field named; on a reconcile the
last good one stays in force.

Pure: the file's model (:class:`NodeFile`), :func:`parse_blocklist` and :func:`plan_node`
(file + network.yaml + blocklist text -> :class:`NodePlan`, the maps' contents). I/O, thin and
last: :func:`read_node`, :func:`apply_node` and :func:`attach_node`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from popshift.network import NetworkConfig
from schemas.bucket import Bucket, Flag
from services.forwarder import libbpf
from services.forwarder.layout import TIERS, IpNetwork, PeerKind
from services.forwarder.loader import Forwarder, Role, bucket_array
from services.forwarder.types import NodeConfig

log = logging.getLogger("popshift.forwarder.node")

XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class NodeFileError(ValueError):
    """A node file this node must not apply; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Addresses(_Strict):
    ipv4: ipaddress.IPv4Address | None = None
    """Outer source of this node's GUE and the destination peers encapsulate to."""
    ipv6: ipaddress.IPv6Address | None = None

    @model_validator(mode="after")
    def _one(self) -> Addresses:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("give ipv4, ipv6 or both")
        return self


class Vip(_Strict):
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    tier: int = Field(ge=0, lt=TIERS)


class Peer(_Strict):
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    pop: str
    """The PoP whose nodes send from it: this node's PoP = local, any other = remote."""


class NodeFile(_Strict):
    """One node, as its operator declares it (deploy/config/node-example.yaml)."""

    role: Literal["edge", "server"]
    pop: str
    node: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    interface: str = Field(min_length=1, max_length=15)
    netns: str | None = None
    xdp_mode: Literal["auto", "native", "generic"] = "auto"
    addresses: Addresses
    next_hop: str = "fib"
    """``fib`` (bpf_fib_lookup: the kernel's routes and neighbours) or the next hop's MAC."""
    mtu: int = Field(1500, ge=1280, le=65535)
    syncookies: bool = False
    vips: list[Vip] = Field(default_factory=list)
    peers: list[Peer] = Field(default_factory=list)
    tier_hash: dict[int, Literal["five_tuple", "addresses"]] = Field(default_factory=dict)
    blocklist_file: Path | None = None
    bootstrap_servers: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list
    )

    @field_validator("next_hop")
    @classmethod
    def _next_hop(cls, v: str) -> str:
        if v != "fib" and not _MAC.match(v):
            raise ValueError(f"{v!r} is neither 'fib' nor a MAC like 02:00:00:00:00:99")
        return v.lower()

    @field_validator("tier_hash")
    @classmethod
    def _tiers(cls, v: dict[int, str]) -> dict[int, str]:
        bad = sorted(t for t in v if not 0 <= t < TIERS)
        if bad:
            raise ValueError(f"tier {bad[0]} outside 0..{TIERS - 1}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> NodeFile:
        vips = [v.prefix for v in self.vips]
        if len(set(vips)) != len(vips):
            raise ValueError("vips: a prefix is listed twice")
        peers = [p.prefix for p in self.peers]
        if len(set(peers)) != len(peers):
            raise ValueError("peers: a prefix is listed twice")
        if self.role == "server" and (self.vips or self.bootstrap_servers):
            raise ValueError("vips, bootstrap_servers: only an edge forwards by VIP and bucket")
        return self

    @property
    def identity(self) -> tuple[str, str, str, str, str | None]:
        """What a reconcile cannot change: the program, its maps and where it is attached."""
        return (self.role, self.pop, self.node, self.interface, self.netns)


@dataclass(frozen=True)
class NodePlan:
    """Everything the maps hold besides the tables, resolved against network.yaml."""

    config: NodeConfig
    vips: dict[IpNetwork, int]
    peers: dict[IpNetwork, tuple[PeerKind, int]]
    hash_addresses_only: dict[int, bool]
    blocklist: frozenset[IpNetwork]
    bootstrap: tuple[str, ...]


def _field_errors(source: str, exc: ValidationError) -> NodeFileError:
    lines = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(file)"
        lines.append(f"{where}: {e['msg']}")
    return NodeFileError(f"{source}: " + "; ".join(lines))


def parse_node(text: str, source: str = "node file") -> NodeFile:
    """The file's YAML, validated; :class:`NodeFileError` names the first bad fields."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NodeFileError(f"{source}: not YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise NodeFileError(f"{source}: a mapping of fields is needed (role, pop, ...)")
    try:
        return NodeFile.model_validate(raw)
    except ValidationError as exc:
        raise _field_errors(source, exc) from exc


def parse_blocklist(text: str, source: str = "blocklist") -> frozenset[IpNetwork]:
    """One prefix (or address) per line; ``#`` starts a comment; blank lines are skipped."""
    out: set[IpNetwork] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            out.add(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise NodeFileError(f"blocklist_file {source} line {n}: {exc}") from exc
    return frozenset(out)


def plan_node(node: NodeFile, network: NetworkConfig, blocklist: frozenset[IpNetwork]) -> NodePlan:
    """The maps' contents for this node; a PoP or tier network.yaml lacks is refused."""
    ids = {p.name: p.id for p in network.pops}

    def pop_id(field: str, name: str) -> int:
        if name not in ids:
            raise NodeFileError(f"{field}: {name!r} is not a PoP of the network file")
        return ids[name]

    own = pop_id("pop", node.pop)
    peers = {
        p.prefix: (
            PeerKind.LOCAL if p.pop == node.pop else PeerKind.REMOTE,
            pop_id(f"peers.{k}.pop", p.pop),
        )
        for k, p in enumerate(node.peers)
    }
    known = {t.id: t for t in network.tiers}
    for k, v in enumerate(node.vips):
        if v.tier not in known:
            raise NodeFileError(f"vips.{k}.tier: tier {v.tier} is not in the network file")
    hashing = {t: known[t].hash_addresses_only if t in known else False for t in range(TIERS)}
    hashing |= {t: h == "addresses" for t, h in node.tier_hash.items()}
    a = node.addresses
    config = NodeConfig(
        pop_id=own,
        self4=a.ipv4,
        self6=a.ipv6,
        nexthop_mac=bytes(6)
        if node.next_hop == "fib"
        else bytes.fromhex(node.next_hop.replace(":", "")),
        mtu=node.mtu,
        fib=node.next_hop == "fib",
        syncookies=node.syncookies,
    )
    return NodePlan(
        config=config,
        vips={v.prefix: v.tier for v in node.vips},
        peers=peers,
        hash_addresses_only=hashing,
        blocklist=blocklist,
        bootstrap=tuple(str(s) for s in node.bootstrap_servers),
    )


def bootstrap_table(servers: tuple[str, ...], buckets: int) -> list[Bucket]:
    """Every bucket processed in this PoP: the servers round robin, no secondary."""
    return [Bucket(primary=servers[i % len(servers)]) for i in range(buckets)]


# --------------------------------------------------------------------------------------------
# I/O: read the files, write the maps, attach.
# --------------------------------------------------------------------------------------------


def read_node(path: Path, network: NetworkConfig) -> tuple[NodeFile, NodePlan]:
    """The node file and its blocklist, read now, validated and resolved."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise NodeFileError(f"{path}: {exc.strerror}") from exc
    node = parse_node(text, str(path))
    blocklist: frozenset[IpNetwork] = frozenset()
    if node.blocklist_file is not None:
        try:
            listed = node.blocklist_file.read_text()
        except OSError as exc:
            raise NodeFileError(f"blocklist_file {node.blocklist_file}: {exc.strerror}") from exc
        blocklist = parse_blocklist(listed, str(node.blocklist_file))
    return node, plan_node(node, network, blocklist)


def apply_node(fwd: Forwarder, plan: NodePlan) -> list[int]:
    """Write the node's maps; returns the tiers that got the bootstrap table (those whose table
    in force had no bucket at all: Redis has none for them yet)."""
    fwd.configure(plan.config)
    fwd.set_peers(plan.peers)
    for tier in range(fwd.tiers):
        fwd.set_tier_hash(tier, plan.hash_addresses_only.get(tier, False))
    fwd.set_blocklist(plan.blocklist)
    if fwd.role is not Role.EDGE:
        return []
    fwd.set_vips(plan.vips)
    booted = []
    if plan.bootstrap:
        image = bucket_array(bootstrap_table(plan.bootstrap, fwd.buckets))
        for tier in range(fwd.tiers):
            if not np.any(fwd.read_table(tier)["flags"] & np.uint8(Flag.VALID)):
                fwd.write_table(tier, image)
                booted.append(tier)
    return booted


def attach_node(fwd: Forwarder, node: NodeFile) -> str:
    """Attach the program to the node's interface (in its netns); returns the mode used.

    ``auto`` tries native XDP and falls back to generic (skb) mode with a warning: generic
    works on any device but runs after the kernel allocated the packet, at several times the
    cost.
    """
    if fwd.attached_here(node.interface, node.netns):
        return "already attached"
    modes = {
        "native": [("native", XDP_FLAGS_DRV_MODE)],
        "generic": [("generic", XDP_FLAGS_SKB_MODE)],
        "auto": [("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)],
    }[node.xdp_mode]
    where = f"{node.interface}" + (f" in netns {node.netns}" if node.netns else "")
    for k, (name, flags) in enumerate(modes):
        try:
            fwd.attach(node.interface, node.netns, flags)
            return name
        except libbpf.BpfError as exc:
            if k + 1 == len(modes):
                raise
            log.warning("native XDP refused on %s (%s): attaching in generic mode", where, exc)
    raise AssertionError("unreachable")
