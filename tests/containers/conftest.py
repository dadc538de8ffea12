"""Kafka, Redis and every control-plane service, each in its own container (deploy/images),
started and stopped by testcontainers.

They run beside the local Kafka and Redis of deploy/local (9092/9093, 6379) and never touch
them: their own ports (Kafka 29092 + controller 29093, Redis 26379, metrics 2946x), their own
state dir (secrets, data) under pytest's tmp dir. Every container uses the host's network only
(scripts/docker-setup.sh gives the daemon no bridge), so all traffic stays on loopback.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

# Read by testcontainers when it is first used: no Ryuk reaper (there is no image for it here);
# the fixtures below stop what they start.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from testcontainers.core.container import DockerContainer

from popshift import topics as t
from popshift.credentials import KafkaAccess, RedisAccess, Secrets
from popshift.settings import Settings
from tests.conftest import LOCAL, NETWORK, REPO

TAG = os.environ.get("POPSHIFT_IMAGE_TAG", "local")
KAFKA_IMAGE = f"popshift-kafka:{TAG}"
REDIS_IMAGE = f"popshift-redis:{TAG}"
POPSHIFT_IMAGE = f"popshift:{TAG}"
KAFKA_PORT, CONTROLLER_PORT, REDIS_PORT = 29092, 29093, 26379
IMAGE_UID = 10001  # user popshift in every image (deploy/images/base/bootstrap.sh)

INTERVAL_S = 0.5  # heartbeats, pop-load, table ticks: fast, as tests/test_outages.py
# Analytics decides on a short window (deploy/config/analytics.yaml's rules, shorter).
RULES = {
    "defaults": {
        "window_s": 2.0,
        "min_dwell_s": 2.0,
        "refresh_s": 1.0,
        "shed": {"combined_over": {"enter": 0.85, "exit": 0.75}},
        "can_take": {"combined_under": {"enter": 0.6, "exit": 0.7}},
    }
}
# Each service's metrics port (the health check asks it), unlike the defaults 946x that
# processes on this host may hold.
METRICS_PORTS = {"ingest": 29462, "analytics": 29463, "policy-engine": 29464}
WRITER_METRICS_PORT = {pop: 29465 + k for k, pop in enumerate(NETWORK.pop_names)}


@pytest.fixture(scope="session")
def images() -> None:
    """Docker running and every image current; both scripts are idempotent and return in
    seconds when nothing changed (deploy/images/build.sh compares a hash of the inputs)."""
    subprocess.run(["bash", str(REPO / "scripts" / "docker-setup.sh")], check=True, timeout=300)
    subprocess.run(["bash", str(REPO / "deploy" / "images" / "build.sh")], check=True, timeout=1200)


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The containers' state dir: secrets from deploy/local/secrets.sh, then Kafka's and Redis'
    data. Mounted at the same path in every container, owned by the images' user."""
    path = tmp_path_factory.mktemp("popshift-containers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPSHIFT_")}
    env["POPSHIFT_STATE_DIR"] = str(path)
    subprocess.run(["bash", str(LOCAL / "secrets.sh")], env=env, check=True, timeout=60)
    subprocess.run(["chown", "-R", f"{IMAGE_UID}:{IMAGE_UID}", str(path)], check=True)
    return path


def container(image: str, name: str, state: Path, env: dict[str, str]) -> DockerContainer:
    """A container on the host's network with the state dir mounted where the host has it."""
    c = DockerContainer(image).with_name(name).with_kwargs(network_mode="host")
    c.with_volume_mapping(str(state), str(state), "rw")
    for key, value in {"POPSHIFT_STATE_DIR": str(state), **env}.items():
        c.with_env(key, value)
    return c


def logs(c: DockerContainer, lines: int = 60) -> str:
    out, err = c.get_logs()
    text = (out + err).decode(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_healthy(c: DockerContainer, timeout_s: float) -> float:
    """Waits for the image's HEALTHCHECK to pass; returns the seconds it took."""
    started = time.monotonic()
    wrapped = c.get_wrapped_container()
    while True:
        wrapped.reload()
        st = wrapped.attrs["State"]
        if st["Status"] != "running":
            raise AssertionError(f"{wrapped.name} {st['Status']} ({st['ExitCode']}):\n{logs(c)}")
        if st.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{wrapped.name} not healthy after {timeout_s}s:\n{logs(c)}")
        time.sleep(0.5)


def stop(c: DockerContainer, grace_s: int = 30) -> int:
    """SIGTERM (tini passes it on), then remove; returns the exit code."""
    wrapped = c.get_wrapped_container()
    wrapped.reload()
    if wrapped.status == "running":
        wrapped.stop(timeout=grace_s)
    code = int(wrapped.wait(timeout=grace_s + 10)["StatusCode"])
    c.stop()
    return code


@pytest.fixture(scope="session")
def session_id() -> str:
    return f"popshift-ct-{os.getpid()}"


@contextmanager
def running(c: DockerContainer, timeout_s: float, state: Path) -> Iterator[Secrets]:
    """The container started and healthy; the state's secrets; stopped after."""
    c.start()
    try:
        wait_healthy(c, timeout_s)
        yield Secrets(state / "secrets")
    finally:
        stop(c)


@pytest.fixture(scope="session")
def ct_kafka(images: None, state: Path, session_id: str) -> Iterator[KafkaAccess]:
    """The Kafka container, as the admin."""
    env = {
        "POPSHIFT_KAFKA_PORT": str(KAFKA_PORT),
        "POPSHIFT_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
        "POPSHIFT_KAFKA_HEAP": "-Xmx512m -Xms256m",
    }
    c = container(KAFKA_IMAGE, f"{session_id}-kafka", state, env)
    with running(c, 120, state) as secrets:
        password = secrets.password("kafka", "admin")
        yield KafkaAccess(f"127.0.0.1:{KAFKA_PORT}", "admin", password, str(secrets.ca_file))


@pytest.fixture(scope="session")
def ct_redis(images: None, state: Path, session_id: str) -> Iterator[RedisAccess]:
    """The Redis container, as the admin."""
    env = {"POPSHIFT_REDIS_PORT": str(REDIS_PORT)}
    c = container(REDIS_IMAGE, f"{session_id}-redis", state, env)
    with running(c, 60, state) as secrets:
        password = secrets.password("redis", "admin")
        url = f"rediss://127.0.0.1:{REDIS_PORT}/0"
        yield RedisAccess(url, "admin", password, str(secrets.ca_file))


@dataclass
class Stack:
    """One run of the control plane: its names (a prefix of its own), its service containers."""

    prefix: str
    state: Path
    env: dict[str, str]
    kafka: KafkaAccess
    redis: RedisAccess
    services: dict[str, DockerContainer] = field(default_factory=dict)

    @property
    def names(self) -> Settings:
        return Settings(topic_prefix=self.prefix)

    def topic(self, topic: t.Topic) -> t.Topic:
        return self.names.topic(topic)

    def run_once(self, command: str, timeout_s: float = 120) -> str:
        """An admin command in a popshift container of its own; its output. It must exit 0."""
        c = container(POPSHIFT_IMAGE, f"{self.prefix}-admin", self.state, self.env)
        c.with_command(["bash", "-c", command])
        c.start()
        try:
            code = int(c.get_wrapped_container().wait(timeout=timeout_s)["StatusCode"])
            out = logs(c, 200)
        finally:
            c.stop()
        assert code == 0, f"{command!r} exited {code}:\n{out}"
        return out

    def start(self, name: str, command: list[str], env: dict[str, str]) -> DockerContainer:
        """A service in its own container, named ``<prefix>-<name>``; a stable instance id, so
        that a restarted container takes its own locks back at once (README, "standbys")."""
        full = f"{self.prefix}-{name}"
        c = container(POPSHIFT_IMAGE, full, self.state, {**self.env, **env})
        c.with_env("POPSHIFT_INSTANCE_ID", full).with_command(command)
        c.start()
        self.services[name] = c
        return c


@pytest.fixture
def stack(
    ct_kafka: KafkaAccess, ct_redis: RedisAccess, state: Path, session_id: str
) -> Iterator[Stack]:
    """Topics and principals for a prefix of this test's own (made by the admin, in a popshift
    container), then ingest, analytics, the policy engine and one table writer per PoP, each
    logging in as its own principal. Every service must stop cleanly on SIGTERM (exit 0)."""
    prefix = f"{session_id}-{uuid.uuid4().hex[:6]}"
    rules = state / f"{prefix}-analytics.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    rules.chmod(0o644)
    env = {
        "POPSHIFT_KAFKA_BOOTSTRAP": ct_kafka.bootstrap,
        "POPSHIFT_REDIS_URL": ct_redis.url,
        "POPSHIFT_TOPIC_PREFIX": prefix,
        "POPSHIFT_TOPIC_PARTITIONS": "1",
        "POPSHIFT_INGEST_GROUP": f"{prefix}-ingest",
        "POPSHIFT_HEARTBEAT_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_PUBLISH_INTERVAL_S": str(INTERVAL_S),
        "POPSHIFT_ANALYTICS_APP_ID": f"{prefix}-analytics",
        "POPSHIFT_ANALYTICS_CONFIG": str(rules),
        "POPSHIFT_POLICY_GROUP": f"{prefix}-engine",
        "POPSHIFT_POLICY_OVERRIDES_KEY": f"{prefix}:overrides",
        "POPSHIFT_POLICY_LEADER_KEY": f"{prefix}:policy:leader",
        "POPSHIFT_TABLE_GROUP_PREFIX": f"{prefix}-writer",
        "POPSHIFT_TABLE_KEY_PREFIX": f"{prefix}:table",
        "POPSHIFT_TABLE_BITS": "8",
        "POPSHIFT_TABLE_TICK_S": str(INTERVAL_S),
    }
    s = Stack(prefix, state, env, ct_kafka, ct_redis)
    s.run_once("popshift topics create && popshift access grant")
    codes: dict[str, int] = {}
    try:
        for name in ("ingest", "analytics", "policy-engine"):
            s.start(name, ["popshift", name], {"POPSHIFT_METRICS_PORT": str(METRICS_PORTS[name])})
        for pop in NETWORK.pop_names:
            s.start(
                f"table-writer-{pop}",
                ["popshift", "table-writer"],
                {"POPSHIFT_TABLE_POP": pop, "POPSHIFT_METRICS_PORT": str(WRITER_METRICS_PORT[pop])},
            )
        for c in s.services.values():
            wait_healthy(c, 90)
        yield s
    finally:
        tails = {}
        for name, c in s.services.items():
            tails[name] = logs(c, 40)
            codes[name] = stop(c)
    bad = {name: code for name, code in codes.items() if code != 0}
    assert not bad, "services that did not stop cleanly: " + "\n".join(
        f"{name} exited {code}:\n{tails[name]}" for name, code in bad.items()
    )
