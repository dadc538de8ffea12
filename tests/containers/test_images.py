"""The images themselves (deploy/images): cached by content, health-checked, not root, and the
popshift image runs popshift."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from types import ModuleType

import docker
import pytest

from popshift.settings import settings_class
from tests.conftest import REPO
from tests.containers.conftest import KAFKA_IMAGE, POPSHIFT_IMAGE, REDIS_IMAGE, TAG

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

IMAGES = (f"popshift-base:{TAG}", KAFKA_IMAGE, REDIS_IMAGE, POPSHIFT_IMAGE)


def healthcheck_module() -> ModuleType:
    path = REPO / "deploy" / "images" / "popshift" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("popshift_image_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_health_check_knows_every_services_default_metrics_port() -> None:
    from popshift.cli import DELEGATED

    ports = healthcheck_module().DEFAULT_PORTS
    served = {
        "agent": "services.feedback_ingest.settings.AgentSettings",
        "ingest": "services.feedback_ingest.settings.IngestSettings",
        "analytics": "services.analytics.app.AnalyticsSettings",
        "policy-engine": "services.policy_engine.settings.PolicySettings",
        "table-writer": "services.table_writer.settings.TableWriterSettings",
        "forwarder-sync": "services.forwarder.sync_settings.SyncSettings",
        "console": "popshift.console.ConsoleSettings",
    }
    assert set(ports) == set(served) and set(served) <= set(DELEGATED)
    for command, dotted in served.items():
        assert ports[command] == settings_class(dotted).default_metrics_port, command  # type: ignore[attr-defined]


def test_a_second_build_builds_nothing(images: None) -> None:
    client = docker.from_env()
    before = {name: client.images.get(name).id for name in IMAGES}
    build = REPO / "deploy" / "images" / "build.sh"
    out = subprocess.run(
        ["bash", str(build)], check=True, capture_output=True, text=True, timeout=300
    ).stderr
    assert out.count("is up to date") == len(IMAGES), out
    assert "building" not in out
    assert {name: client.images.get(name).id for name in IMAGES} == before


@pytest.mark.parametrize("name", IMAGES)
def test_every_image_is_labelled_with_its_inputs_and_runs_as_popshift(
    images: None, name: str
) -> None:
    config = docker.from_env().images.get(name).attrs["Config"]
    assert len(config["Labels"]["org.popshift.inputs"]) == 64
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    if name != f"popshift-base:{TAG}":
        assert config["User"] == "popshift"
        assert config["Healthcheck"]["Test"][0] == "CMD"


def test_the_popshift_image_runs_popshift_with_the_settings_it_is_given(images: None) -> None:
    out = docker.from_env().containers.run(
        POPSHIFT_IMAGE,
        ["popshift", "settings"],
        environment={"POPSHIFT_KAFKA_BOOTSTRAP": "127.0.0.1:29092", "POPSHIFT_TABLE_BITS": "8"},
        network_mode="host",
        remove=True,
    )
    shown = json.loads(out)
    assert shown["kafka_bootstrap"] == "127.0.0.1:29092" and shown["table_bits"] == 8
    # The relative defaults resolve in the image's working directory.
    assert shown["network_file"] == "deploy/config/network.yaml"
    listing = docker.from_env().containers.run(
        POPSHIFT_IMAGE, ["ls", shown["network_file"]], network_mode="host", remove=True
    )
    assert listing.strip() == b"deploy/config/network.yaml"
