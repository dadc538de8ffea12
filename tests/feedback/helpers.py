"""Shared by the feedback-pipeline tests: read a topic, wait for a condition, start services."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaException

from popshift.bus import Received, TypedConsumer, transient
from popshift.credentials import KafkaAccess
from popshift.topics import Topic
from tests.conftest import REPO, server_address


class TopicReader:
    """Validated messages of one topic, from the beginning; ``poll`` adds what has arrived."""

    def __init__(self, kafka: KafkaAccess, topic: Topic, group: str) -> None:
        self.consumer = TypedConsumer(kafka, group, [topic])
        self.messages: list[Received] = []

    def poll(self, timeout: float = 0.2) -> list[Received]:
        try:
            self.consumer.poll_batch(self.messages.append, timeout=timeout, max_messages=5000)
        except KafkaException as exc:
            if not transient(exc):  # a topic just created may not be in metadata yet
                raise
        return self.messages

    def wait_for(
        self, predicate: Callable[[list[Received]], Any], deadline_s: float, what: str = ""
    ) -> Any:
        end = time.monotonic() + deadline_s
        while True:
            result = predicate(self.poll())
            if result:
                return result
            assert time.monotonic() < end, f"not within {deadline_s}s: {what}"

    def close(self) -> None:
        self.consumer.close()


@contextmanager
def service(module: str, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A service as a real process, as the lab runs it; stopped with SIGTERM, must exit 0.

    Its stderr goes to a file, not a pipe: nobody reads a pipe while the test runs, and a
    service that logs a lot (librdkafka while the broker is away) would block on a full one.
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO,
            env={**os.environ, **env},
            stderr=err,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                err.seek(0)
                sys.stderr.write(err.read().decode(errors="replace")[-5000:])
            assert proc.returncode == 0, f"{module} exited {proc.returncode}"


class SimulatedAgents:
    """N agents heartbeating from a thread; loads and silences are changed by the test."""

    def __init__(
        self, kafka: KafkaAccess, topic: Topic, servers: dict[str, list[str]], interval_s: float
    ) -> None:
        from popshift.bus import TypedProducer

        self.topic = topic
        self.interval_s = interval_s
        self.producer = TypedProducer(kafka)
        self.util = {(pop, s): 0.5 for pop, names in servers.items() for s in names}
        self.address = {
            (pop, s): server_address(pop, k + 1)
            for pop, names in servers.items()
            for k, s in enumerate(names)
        }
        self.silent: set[str] = set()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set(self, pop: str, util: float) -> None:
        for key in self.util:
            if key[0] == pop:
                self.util[key] = util

    def _run(self) -> None:
        from schemas.messages import ServerHeartbeat

        seq = 0
        while not self._stop.wait(self.interval_s):
            seq += 1
            for (pop, server), util in list(self.util.items()):
                if server in self.silent:
                    continue
                hb = ServerHeartbeat(
                    pop=pop,
                    server=server,
                    address=self.address[(pop, server)],
                    seq=seq,
                    sent_at=time.time(),
                    capacity_cores=4.0,
                    cpu_busy_cores=4.0 * util,
                )
                self.producer.send(self.topic, pop, hb)
                self.sent += 1
            self.producer.poll(0)

    def __enter__(self) -> SimulatedAgents:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.producer.flush()
