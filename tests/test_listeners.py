"""Nothing popshift runs listens beyond loopback unless told to.

Each service runs as a real process with its default settings (only where Kafka and Redis are,
and names of its own, are set); once it talks to Kafka, every socket it listens on (TCP LISTEN,
bound UDP) is read from /proc and must be on a loopback address. The console's web page and the
lab's HTTP server bind loopback by default (the lab passes 0.0.0.0 inside a namespace).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from lab.app.server import Identity, build_parser, start
from popshift import topics
from popshift.bus import create_topics
from popshift.credentials import KafkaAccess, RedisAccess
from popshift.settings import Settings
from tests.feedback.helpers import service

TCP_LISTEN, TCP_ESTABLISHED, UDP_UNCONNECTED = "0A", "01", "07"


def _address(hex_addr: str) -> str:
    """/proc/net's hex address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _sockets(pid: int) -> list[tuple[str, str, int, str, int]]:
    """(protocol, state, local port, local address, remote port) of every socket of ``pid``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            f = line.split()
            if f[9] in inodes:
                local, remote = f[1].rsplit(":", 1), f[2].rsplit(":", 1)
                found.append(
                    (proto, f[3], int(local[1], 16), _address(local[0]), int(remote[1], 16))
                )
    return found


def _listening(pid: int) -> list[tuple[str, str, int]]:
    return [
        (proto, addr, port)
        for proto, state, port, addr, _ in _sockets(pid)
        if (proto.startswith("tcp") and state == TCP_LISTEN)
        or (proto.startswith("udp") and state == UDP_UNCONNECTED)
    ]


def _talks_to(pid: int, port: int) -> bool:
    return any(s[1] == TCP_ESTABLISHED and s[4] == port for s in _sockets(pid))


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.slow
def test_every_service_with_default_settings_listens_on_loopback_only(
    kafka: KafkaAccess, redis_access: RedisAccess, unique: str, tmp_path: Path
) -> None:
    env = {
        "POPSHIFT_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "POPSHIFT_REDIS_URL": redis_access.url,
        "POPSHIFT_TOPIC_PREFIX": unique,
        "POPSHIFT_TOPIC_PARTITIONS": "1",
        "POPSHIFT_INGEST_GROUP": f"{unique}-ingest",
        "POPSHIFT_POLICY_GROUP": f"{unique}-engine",
        "POPSHIFT_POLICY_OVERRIDES_KEY": f"{unique}:overrides",
        "POPSHIFT_POLICY_LEADER_KEY": f"{unique}:policy:leader",
        "POPSHIFT_TABLE_GROUP_PREFIX": f"{unique}-writer",
        "POPSHIFT_TABLE_KEY_PREFIX": f"{unique}:table",
        "POPSHIFT_ANALYTICS_APP_ID": f"{unique}-analytics",
        "POPSHIFT_ANALYTICS_DATADIR": str(tmp_path / "faust"),
    }
    agent = ("--pop", "a", "--server", "a1", "--address", "192.0.2.1")
    specs = [
        ("services.feedback_ingest.ingest", ()),
        ("services.analytics.app", ()),
        ("services.policy_engine.service", ()),
        ("services.table_writer.service", ("a",)),
        ("services.feedback_ingest.agent", agent),
        ("popshift.console", ()),  # its web page, on 127.0.0.1:8088
    ]
    mine = Settings(topic_prefix=unique)
    create_topics(kafka, [mine.topic(t) for t in topics.ALL_TOPICS], partitions=1)
    kafka_port = int(kafka.bootstrap.rsplit(":", 1)[1])
    admin = AdminClient(kafka.config())
    groups = {f"{unique}-ingest", f"{unique}-analytics"}  # joined once started for real

    def started(procs: dict[str, subprocess.Popen[bytes]]) -> bool:
        for module, proc in procs.items():
            assert proc.poll() is None, f"{module} exited {proc.returncode}"
        joined = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
        return groups <= joined and all(_talks_to(p.pid, kafka_port) for p in procs.values())

    with ExitStack() as stack:
        procs = {m: stack.enter_context(service(m, env, *args)) for m, args in specs}
        deadline = time.monotonic() + 120.0
        while not started(procs):
            assert time.monotonic() < deadline, "the services did not start"
            time.sleep(0.5)
        time.sleep(3.0)  # anything that opens a listener once it runs
        for module, proc in procs.items():
            for proto, addr, port in _listening(proc.pid):
                assert ipaddress.ip_address(addr).is_loopback, (
                    f"{module} listens on {addr}:{port}/{proto}"
                )


def test_the_lab_server_listens_on_loopback_by_default() -> None:
    args = build_parser().parse_args(["--pop", "z", "--server", "z-s9", "--port", "0"])
    assert args.host == "127.0.0.1"

    async def bound() -> list[str]:
        server = await start(Identity(pop="z", server="z-s9"), args.host, args.port)
        try:
            return [s.getsockname()[0] for s in server.sockets]
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(bound()) == ["127.0.0.1"]
