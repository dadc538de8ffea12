"""Settings of the agent and the ingest, read from POPSHIFT_* variables (and the agent's flags).

Each field's description is its documentation.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from popshift.settings import Settings


class IngestSettings(Settings):
    """feedback_ingest: validate, normalise, track liveness, publish pop-load.v1."""

    default_principal: ClassVar[str] = "ingest"
    default_metrics_port: ClassVar[int] = 9462

    ingest_group: str = Field(
        "popshift-ingest", description="Kafka consumer group of the ingest on feedback.v1."
    )
    heartbeat_interval_s: float = Field(
        1.0,
        gt=0.0,
        le=3600.0,
        description="Heartbeat interval assumed for feedback that does not carry its own "
        "(PoP-aggregated feedback, older agents); an agent's heartbeats carry its interval.",
    )
    missed_heartbeats: int = Field(
        3,
        ge=1,
        le=1000,
        description="K: a server silent for K heartbeat intervals is marked down and leaves its "
        "PoP's healthy capacity until its next heartbeat.",
    )
    forget_after_s: float = Field(
        300.0, gt=0.0, description="A server silent this long is dropped from pop-load.v1."
    )
    publish_interval_s: float = Field(
        1.0, gt=0.0, le=60.0, description="How often pop-load.v1 is published for every PoP."
    )
    ingest_warmup_s: float = Field(
        1.0,
        ge=0.0,
        le=60.0,
        description="A PoP's first pop-load after this ingest starts or takes over its "
        "partition waits this long, so that every server has been heard (a heartbeat interval).",
    )
    ingest_batch: int = Field(
        2000, ge=1, le=100_000, description="Most feedback messages handled per consumer poll."
    )


class AgentSettings(Settings):
    """The compute-server agent; every field is also a flag (``--pop a --interval-s 0.5``)."""

    default_principal: ClassVar[str] = "agent"
    default_metrics_port: ClassVar[int] = 9461

    model_config = SettingsConfigDict(
        env_prefix="POPSHIFT_",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    pop: str = Field(description="PoP this server belongs to (a name in network.yaml).")
    server: str = Field(description="This server's name, unique within its PoP.")
    address: str = Field(description="This server's external IP address.")
    capacity_cores: float | None = Field(
        None,
        gt=0.0,
        description="Capacity in cores; unset = the cgroup's CPU quota, else the CPUs this "
        "process may run on.",
    )
    interval_s: float = Field(
        1.0,
        gt=0.0,
        le=3600.0,
        description="Heartbeat interval; every heartbeat carries it, so the ingest follows it.",
    )
    cgroup: str | None = Field(
        None,
        description="Measure this cgroup's CPU (a directory under /sys/fs/cgroup) instead of "
        "the whole machine's /proc/stat.",
    )
    probe: str | None = Field(
        None,
        description="Health probe of the local service: http://host:port/path (GET, 2xx/3xx = "
        "success) or tcp://host:port (connect); unset = no QoS in heartbeats.",
    )
    probe_interval_s: float = Field(0.2, gt=0.0, description="Time between two probes.")
    probe_timeout_s: float = Field(
        1.0, gt=0.0, description="A probe slower than this counts as failed."
    )
    buffer_size: int = Field(
        300,
        ge=1,
        le=1_000_000,
        description="Heartbeats kept while Kafka is unreachable; when full the oldest is "
        "dropped (and counted).",
    )
    producer_stall_s: float = Field(
        15.0,
        gt=0.0,
        description="Heartbeats in flight and none acknowledged or failed for this long: the "
        "Kafka client is replaced (a half-open connection must not silence a live server).",
    )
    max_in_flight: int = Field(
        10,
        ge=1,
        le=10_000,
        description="Heartbeats handed to the Kafka client but not yet acknowledged; beyond "
        "this they wait in the bounded buffer.",
    )
