"""Inputs checked against the network description (docs/security.md).

A schema (schemas/messages.py) says what a message may look like; these checks say what it may
claim about *this* network (popshift/network.py). Anyone who can publish on the bus could
otherwise steer a PoP: a heartbeat naming any address with a huge capacity would become the
primary of every bucket, a policy could send a tier that must stay local, or too far. Ingest
and table writer each run them (the writer too, since pop-load.v1 and policies.v1 can be
written by anyone as well), so no single bad message can point a bucket outside the PoP's
declared servers and its peer PoPs.

Pure: every check raises :class:`Refused`, whose text starts with its kind. The consumers
dead-letter it with that text, and the bus counts dead letters per kind (the text before the
first colon: ``ConsumerStats.reasons`` in popshift/bus.py).
"""

from __future__ import annotations

from popshift.network import NetworkConfig, PopConfig


class Refused(ValueError):
    """An input the network description does not allow: ``kind: detail``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def check_address(network: NetworkConfig, pop: PopConfig, server: str, address: str) -> None:
    """A server's address must lie in its PoP's server prefixes and be no PoP's ingress."""
    if address in network.ingresses:
        raise Refused("server address is an ingress", f"{pop.name}/{server} claims {address}")
    if not pop.serves(address):
        prefixes = ", ".join(str(p) for p in pop.server_prefixes)
        raise Refused(
            "server address outside the pop's prefixes",
            f"{pop.name}/{server} at {address} is not in {prefixes}",
        )


def check_capacity(pop: PopConfig, server: str, capacity_cores: float) -> None:
    """A server may not claim more cores than its PoP declares a server can have."""
    if capacity_cores > pop.max_server_cores:
        raise Refused(
            "server capacity above the pop's bound",
            f"{pop.name}/{server} claims {capacity_cores:g} cores,"
            f" {pop.name}'s servers have at most {pop.max_server_cores:g}",
        )


def check_server(
    network: NetworkConfig, pop: PopConfig, server: str, address: str, capacity_cores: float
) -> None:
    """Both checks of one server: its address, then its capacity."""
    check_address(network, pop, server, address)
    check_capacity(pop, server, capacity_cores)


def check_share(
    network: NetworkConfig, source: str, tier: int, destination: str, share: float
) -> None:
    """A share must name a known tier and a known peer PoP; a share above 0 must also be of a
    forwardable tier and go no farther than the tier's ``max_added_latency_ms`` (a pair without
    a known latency is too far)."""
    if destination == source or destination not in network.by_name:
        raise Refused("unknown pop", f"destination {destination!r} is not a peer of {source}")
    rule = network.tier(tier)
    if rule is None:
        raise Refused("unknown tier", f"tier {tier}")
    if share <= 0.0:
        return
    if not rule.forwardable:
        raise Refused("tier not forwardable", f"tier {tier} ({rule.name}) may not be forwarded")
    latency = network.latency(source, destination)
    if latency is None or latency > rule.max_added_latency_ms:
        took = "has no known latency" if latency is None else f"is {latency:g} ms"
        raise Refused(
            "latency bound",
            f"{source}->{destination} {took}, tier {tier} ({rule.name}) allows"
            f" {rule.max_added_latency_ms:g} ms",
        )


def check_epoch(epoch: int, current: int | None) -> None:
    """A policy may not come from an epoch the engines' lock has not reached: only a forger
    knows it. ``current`` None (the lock's epoch could not be read): not checked.

    Older epochs are not refused here: the table writer orders policies by (epoch, version)
    and refuses a deposed engine's newer policies itself (services/table_writer/writer.py).
    """
    if current is not None and epoch > current:
        raise Refused(
            "epoch not current", f"epoch {epoch} is not the engine's current epoch {current}"
        )
