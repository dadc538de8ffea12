"""Settings of the forwarder sync (one process per node), read from POPSHIFT_* variables.

The command line (``--pop``, ``--node``, ``--pin-dir``, ``--node-file``) overrides those;
everything else comes from the environment so that a node's unit file and a test set it the
same way.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from popshift.settings import Settings
from services.table_writer.store import PREFIX


class SyncSettings(Settings):
    """forwarder sync: Redis tables (+ table-updates.v1) in; BPF maps, dataplane-stats.v1 out."""

    default_metrics_port: ClassVar[int] = 9466

    def who(self) -> str:
        return self.principal or f"sync-{self.sync_pop}"

    sync_pop: str | None = Field(
        None, description="The PoP whose tables this node follows (a name in network.yaml)."
    )
    sync_node: str | None = Field(
        None, description="This node's name, unique within its PoP (key of dataplane-stats.v1)."
    )
    sync_pin_dir: str = Field(
        "/sys/fs/bpf/popshift", description="bpffs directory under which programs are pinned."
    )
    sync_program: str | None = Field(
        None,
        description="Name of the pinned program whose maps are fed (a directory under the pin "
        "directory); unset = the node name.",
    )
    sync_role: Literal["edge", "server"] = Field(
        "edge", description="Which program to load if none is pinned yet (edge or server)."
    )
    sync_node_file: str | None = Field(
        None,
        description="The node's YAML (deploy/config/node-example.yaml): PoP, node, role, "
        "addresses, VIPs, peers, blocklist; applied and XDP attached at start and on every "
        "reconcile. Unset = the maps' config is someone else's (e.g. the lab).",
    )
    sync_poll_s: float = Field(
        1.0,
        gt=0.0,
        le=3600.0,
        description="How often Redis 'current' keys are read: the fallback when no "
        "table-updates.v1 notice arrives (Kafka down or disabled).",
    )
    sync_stats_interval_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="How often dataplane-stats.v1 is published."
    )
    sync_kafka: bool = Field(
        True,
        description="Use Kafka (table-updates.v1 in, dataplane-stats.v1 out); false = Redis "
        "polling only and no stats.",
    )
    sync_group_prefix: str = Field(
        "popshift-forwarder-sync",
        description="Consumer group prefix; each node uses '<prefix>-<pop>:<node>' so that "
        "every node sees every notice of its PoP (and its ACL covers its own PoP's groups only).",
    )
    sync_batch_size: int = Field(
        16384,
        ge=1,
        le=1 << 20,
        description="Most buckets written per BPF batch-update syscall.",
    )
    sync_backoff_initial_s: float = Field(
        0.5, gt=0.0, description="First wait after a failed Redis read; doubles per failure."
    )
    sync_backoff_max_s: float = Field(
        10.0, gt=0.0, description="Longest wait between two Redis attempts while it is down."
    )
    sync_reconcile_s: float = Field(
        300.0,
        gt=0.0,
        description="How often the maps are read back and compared with Redis in full, which "
        "heals buckets changed behind the sync's back and a Redis that restarted its versions.",
    )
    sync_redis_url: str | None = Field(
        None,
        description="Where this node reads its tables: a read replica of the PoP's Redis "
        "(deploy/cluster/up.sh starts one per PoP); unset: POPSHIFT_REDIS_URL, the primary.",
    )
    sync_redis_timeout_s: float = Field(
        1.0,
        gt=0.0,
        le=60.0,
        description="Socket timeout of every Redis call, so that a hung Redis never stalls "
        "the stats.",
    )
    sync_lease_s: float = Field(
        15.0,
        ge=0.0,
        description="A tier's table is followed this long after its header's written_at (3 x "
        "the table writer's 5 s renewal); then new connections stay local (direction back, "
        "secondaries kept for established ones). 0 = no lease.",
    )
    sync_lease_drain_s: float = Field(
        120.0,
        ge=0.0,
        description="After a lease ran out, inter-PoP secondaries are kept this long (like the "
        "table writer's drain period), then cleared: plain anycast with intra-PoP second chance.",
    )
    table_key_prefix: str = Field(
        PREFIX,
        description="Prefix of every table key in Redis (the table writer's setting of the "
        "same name).",
    )

    @property
    def program(self) -> str:
        name = self.sync_program or self.sync_node
        if not name:
            raise ValueError("set POPSHIFT_SYNC_PROGRAM or POPSHIFT_SYNC_NODE")
        return name
