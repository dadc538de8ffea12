"""Settings shared by every service, read from POPSHIFT_* environment variables.

Each field's description is the documentation; README's settings table is checked against it.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Connection and runtime settings common to all popshift services."""

    model_config = SettingsConfigDict(env_prefix="POPSHIFT_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers (host:port, comma separated)."
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis holding the PoPs' forwarding tables."
    )
    max_message_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest Kafka payload a consumer accepts; larger ones are dead-lettered.",
    )
    service_name: str = Field("popshift", description="OpenTelemetry service.name of this process.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint (e.g. Tempo's http://127.0.0.1:4318/v1/traces); "
        "unset = spans are not exported.",
    )
    table_bits: int = Field(
        16, ge=4, le=20, description="N: each PoP x tier forwarding table has 2^N buckets."
    )
    network_file: str = Field(
        "deploy/config/network.yaml",
        description="YAML describing PoPs, tiers and PoP-to-PoP latency (popshift/network.py).",
    )
    topic_partitions: int = Field(
        3, ge=1, le=1024, description="Partitions of each topic created by `popshift topics`."
    )


def load_settings() -> Settings:
    return Settings()
