"""Shared by the feedback-pipeline tests: read a topic, wait for a condition, start services."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from popshift.bus import Received, TypedConsumer
from popshift.topics import Topic
from tests.conftest import REPO


class TopicReader:
    """Validated messages of one topic, from the beginning; ``poll`` adds what has arrived."""

    def __init__(self, bootstrap: str, topic: Topic, group: str) -> None:
        self.consumer = TypedConsumer(bootstrap, group, [topic])
        self.messages: list[Received] = []

    def poll(self, timeout: float = 0.2) -> list[Received]:
        self.consumer.poll_batch(self.messages.append, timeout=timeout, max_messages=5000)
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
    """A service as a real process, as the lab runs it; stopped with SIGTERM, must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode not in (0, -15):
            sys.stderr.write(err.decode(errors="replace")[-5000:])
        assert proc.returncode == 0, f"{module} exited {proc.returncode}"
