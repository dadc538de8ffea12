"""Settings shared by every service, read from POPSHIFT_* environment variables.

Each field's description is the documentation; README's settings table is checked against it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from popshift.credentials import KafkaAccess, RedisAccess, Secrets
from popshift.leadership import default_holder
from popshift.silence import BusSilence
from popshift.topics import Topic


class Settings(BaseSettings):
    """Connection and runtime settings common to all popshift services."""

    model_config = SettingsConfigDict(env_prefix="POPSHIFT_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers (host:port, comma separated)."
    )
    redis_url: str = Field(
        "rediss://127.0.0.1:6379/0",
        description="Redis holding the PoPs' forwarding tables (rediss:// = TLS, verified "
        "against the secrets' ca.pem).",
    )
    principal: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        json_schema_extra={"shown_default": "the service's own"},
        description="Who this process logs in as to Kafka and Redis (docs/security.md): unset = "
        "the service's own principal (agent, ingest, analytics, engine, writer-<pop>, "
        "sync-<pop>, operator for `popshift policy`; admin for the admin tools).",
    )
    secrets_dir: str = Field(
        default_factory=lambda: os.path.join(
            os.environ.get("POPSHIFT_STATE_DIR", "deploy/local/state"), "secrets"
        ),
        json_schema_extra={"shown_default": "$POPSHIFT_STATE_DIR/secrets"},
        description="Holds ca.pem and kafka/<principal>.password, redis/<principal>.password "
        "(deploy/local/secrets.sh, `popshift access grant`); default deploy/local/state/secrets.",
    )
    max_message_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest Kafka payload a consumer accepts; larger ones are dead-lettered.",
    )
    service_name: str = Field("popshift", description="OpenTelemetry service.name of this process.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (the local Jaeger: "
        "http://127.0.0.1:4318/v1/traces); unset = spans are not exported.",
    )
    zipkin_endpoint: str | None = Field(
        None,
        description="Zipkin v2 JSON spans endpoint (the local Zipkin and its trace UI, `make "
        "traces`: http://127.0.0.1:9411/api/v2/spans); with or instead of OTLP.",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the Prometheus metrics endpoint binds (loopback)."
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        json_schema_extra={"shown_default": "the service's own"},
        description="Port of the Prometheus metrics endpoint (/metrics); unset = the service's "
        "own default (README, Metrics), 0 = not served. A port in use is logged, not fatal.",
    )
    table_bits: int = Field(
        16, ge=4, le=20, description="N: each PoP x tier forwarding table has 2^N buckets."
    )
    network_file: str = Field(
        "deploy/config/network.yaml",
        description="YAML describing PoPs, tiers and PoP-to-PoP latency (popshift/network.py).",
    )
    instance_id: str = Field(
        default_factory=default_holder,
        json_schema_extra={"shown_default": "host:pid"},
        description="Who this process is in a lock it holds (the policy engine's leadership, a "
        "table writer's PoP); default host:pid, so a restarted process waits for its "
        "predecessor's lock to expire. A stable id per unit takes it back at once.",
    )
    bus_silence_s: float = Field(
        3.0,
        gt=0.0,
        description="No message at all on a service's input topics for this long is a silent "
        "bus (Kafka away, or everything upstream dead): policy leases stop ageing.",
    )
    bus_outage_grace_s: float = Field(
        120.0,
        ge=0.0,
        description="The most a silent bus holds policy leases in a row; then they run out as "
        "usual (a dead control plane whose bus went silent with it is back to anycast within "
        "lease + this). When the bus returns, leases run one full lease from then.",
    )
    topic_prefix: str = Field(
        "",
        max_length=100,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="Prepended as '<prefix>.' to every topic name, so that tests, benchmarks and "
        "several labs share one broker; empty = the registry's names.",
    )
    topic_partitions: int = Field(
        3, ge=1, le=1024, description="Partitions of each topic created by `popshift topics`."
    )
    topic_replication_factor: int = Field(
        1,
        ge=1,
        le=16,
        description="Replicas of each topic `popshift topics create` makes (3 on a cluster: "
        "deploy/cluster/up.sh); also faust's internal topics.",
    )
    topic_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        le=16,
        description="min.insync.replicas of each topic created (2 of 3 on a cluster: a write "
        "is acknowledged once two brokers have it); unset: the broker's default.",
    )

    # The principal of a process whose settings are this class and POPSHIFT_PRINCIPAL is unset.
    default_principal: ClassVar[str] = "admin"
    # Its metrics port when POPSHIFT_METRICS_PORT is unset (0: tools serve none).
    default_metrics_port: ClassVar[int] = 0

    def who(self) -> str:
        return self.principal or self.default_principal

    def start_telemetry(self) -> int | None:
        """This service's Prometheus endpoint (popshift/metrics.py), and its spans exported
        over OTLP when an endpoint is set (popshift/tracing.py; without one, spans are not
        even recorded). Returns the metrics port, or None."""
        from popshift import metrics  # the tools that never serve need not import it

        if self.otlp_endpoint or self.zipkin_endpoint:
            from popshift.tracing import setup_tracing

            setup_tracing(self.service_name, self.otlp_endpoint, self.zipkin_endpoint)
        port = self.default_metrics_port if self.metrics_port is None else self.metrics_port
        return metrics.serve(self.metrics_host, port, self.service_name)

    @property
    def secrets(self) -> Secrets:
        return Secrets(Path(self.secrets_dir))

    def kafka(self) -> KafkaAccess:
        """This process's way into Kafka (SASL/SCRAM over TLS as :meth:`who`)."""
        who = self.who()
        return KafkaAccess(
            self.kafka_bootstrap,
            who,
            self.secrets.password("kafka", who),
            str(self.secrets.ca_file),
        )

    def redis(self) -> RedisAccess:
        who = self.who()
        return RedisAccess(
            self.redis_url, who, self.secrets.password("redis", who), str(self.secrets.ca_file)
        )

    def bus_silence(self) -> BusSilence:
        return BusSilence(self.bus_silence_s, self.bus_outage_grace_s)

    def topic(self, topic: Topic) -> Topic:
        """The registry's topic under this process's prefix."""
        if not self.topic_prefix:
            return topic
        return dataclasses.replace(topic, name=f"{self.topic_prefix}.{topic.name}")


# Every settings class, in the order README documents them (`popshift settings --markdown`).
DOCUMENTED_SETTINGS = (
    "popshift.settings.Settings",
    "services.feedback_ingest.settings.AgentSettings",
    "services.feedback_ingest.settings.IngestSettings",
    "services.analytics.app.AnalyticsSettings",
    "services.policy_engine.settings.PolicySettings",
    "services.table_writer.settings.TableWriterSettings",
    "services.forwarder.sync_settings.SyncSettings",
    "popshift.console.ConsoleSettings",
)


def settings_class(dotted: str) -> type[BaseSettings]:
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
        raise TypeError(f"{dotted} is not a settings class")
    return cls


def own_fields(cls: type[BaseSettings]) -> dict[str, FieldInfo]:
    """The fields a class adds to its settings bases: each is documented once, where it is born."""
    inherited: set[str] = set()
    for base in cls.__mro__[1:]:
        if isinstance(base, type) and issubclass(base, BaseSettings) and base is not BaseSettings:
            inherited |= set(base.model_fields)
    return {k: v for k, v in cls.model_fields.items() if k not in inherited}


def markdown_table(dotted: str) -> str:
    """README's table for one settings class, between markers that the docs test checks."""
    cls = settings_class(dotted)
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = [
        f"<!-- settings-table: {dotted} -->",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in own_fields(cls).items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if field.is_required():
            default: object = "(required)"
        elif "shown_default" in extra:  # computed per process: say how
            default = extra["shown_default"]
        else:
            default = field.get_default(call_default_factory=True)
        lines.append(f"| `{(prefix + name).upper()}` | `{default}` | {field.description} |")
    lines.append("<!-- end settings-table -->")
    return "\n".join(lines)
