"""Session fixtures: the real Kafka and Redis, started through deploy/local when not running."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from popshift.credentials import KafkaAccess, RedisAccess
from popshift.network import load_network
from popshift.settings import Settings
from popshift.topics import Topic

REPO = Path(__file__).resolve().parent.parent
LOCAL = REPO / "deploy" / "local"
NETWORK = load_network(REPO / "deploy" / "config" / "network.yaml")


def server_address(pop: str, k: int = 1) -> str:
    """Server ``k`` of ``pop`` where the lab puts it (lab/topology.py: .10+k of the PoP's /24),
    inside the PoP's server_prefixes in deploy/config/network.yaml; the ingest and the table
    writers refuse servers anywhere else (popshift/admission.py)."""
    return str(NETWORK.pop(pop).server_prefixes[0][10 + k])


# CI sets POPSHIFT_REQUIRE_ALL=1: a test skipped for want of root, cgroups, a trace backend or
# anything else then fails instead, so a green CI means that every test ran.
REQUIRE_ALL = os.environ.get("POPSHIFT_REQUIRE_ALL") == "1"
# Tests and the services they start log in as the local admin (a superuser: they make their own
# topics under their own prefixes); tests/test_access.py checks each service principal's ACLs,
# and the lab (tests/e2e) runs every service as its own principal.
os.environ.setdefault("POPSHIFT_PRINCIPAL", "admin")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but POPSHIFT_REQUIRE_ALL=1 forbids skips: {reason}"


SERVICE_MARKERS = {"kafka": "kafka", "redis_access": "redis"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for the local Kafka or Redis carries its marker, so that
    ``-m "not kafka"`` never starts a broker by the back door."""
    for item in items:
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def _start(script: str) -> None:
    """The scripts are idempotent: a no-op when the service already runs and is healthy."""
    subprocess.run(["bash", str(LOCAL / script)], check=True, timeout=300)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> KafkaAccess:
    """The local Kafka, as the test's principal (the local admin unless POPSHIFT_PRINCIPAL)."""
    _start("kafka-start.sh")
    return settings.kafka()


@pytest.fixture(scope="session")
def redis_access(settings: Settings) -> RedisAccess:
    _start("redis-start.sh")
    return settings.redis()


@pytest.fixture
def unique() -> str:
    """A name prefix no other test uses, for topics, consumer groups and namespaces."""
    return f"t{os.getpid()}-{uuid.uuid4().hex[:8]}"


def private_topic(topic: Topic, prefix: str) -> Topic:
    return dataclasses.replace(topic, name=f"{prefix}.{topic.name}")


@pytest.fixture(scope="session")
def _span_exporter() -> object:
    """One in-memory exporter behind the process-wide provider (it can be set only once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(_span_exporter: object) -> Iterator[object]:
    """The in-memory span exporter, emptied before the test."""
    _span_exporter.clear()  # type: ignore[attr-defined]
    yield _span_exporter
