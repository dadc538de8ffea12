"""The health probe of the local service: its latency and success rate are the QoS feedback.

Probes run on their own thread at a fixed pace, so a slow service delays probes, never the
heartbeat; ``take`` summarises what was measured since the previous heartbeat.
"""

from __future__ import annotations

import http.client
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from schemas.messages import ServiceQos

MAX_SAMPLES = 100_000  # ServiceQos.probes' limit; far above any sane probe rate


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already-sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(samples: Sequence[tuple[float, bool]]) -> ServiceQos | None:
    """p50/p95 of the successful probes' latency (ms) and the share of probes that succeeded."""
    if not samples:
        return None
    ok = sorted(min(ms, 3_600_000.0) for ms, success in samples if success)
    return ServiceQos(
        probes=len(samples),
        success_rate=len(ok) / len(samples),
        latency_p50_ms=percentile(ok, 0.5) if ok else None,
        latency_p95_ms=percentile(ok, 0.95) if ok else None,
    )


def make_check(target: str, timeout_s: float) -> Callable[[], bool]:
    """``http://host:port/path`` -> GET answered 2xx/3xx; ``tcp://host:port`` -> connect."""
    url = urlsplit(target)
    host, port = url.hostname or "127.0.0.1", url.port
    if url.scheme == "tcp":
        if port is None:
            raise ValueError(f"probe {target!r}: tcp needs a port")

        def tcp() -> bool:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True

        return tcp
    if url.scheme == "http":
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")

        def http_get() -> bool:
            conn = http.client.HTTPConnection(host, port or 80, timeout=timeout_s)
            try:
                conn.request("GET", path, headers={"User-Agent": "popshift-agent"})
                response = conn.getresponse()
                response.read()
                return 200 <= response.status < 400
            finally:
                conn.close()

        return http_get
    raise ValueError(f"probe {target!r}: scheme must be http or tcp")


class Probe:
    """Probes on a daemon thread every ``interval_s``; ``take`` drains the samples."""

    def __init__(
        self,
        check: Callable[[], bool],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._check = check
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._samples: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="popshift-probe", daemon=True)

    def probe_once(self) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            ok = self._check()
        except OSError:
            ok = False
        ms = (time.perf_counter() - start) * 1000.0
        return ms, ok and ms <= self._timeout_s * 1000.0

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            sample = self.probe_once()
            with self._lock:
                if len(self._samples) < MAX_SAMPLES:
                    self._samples.append(sample)
            self._stop.wait(max(0.0, self._interval_s - (time.monotonic() - started)))

    def take(self) -> ServiceQos | None:
        with self._lock:
            samples, self._samples = self._samples, []
        return summarise(samples)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._timeout_s + self._interval_s + 1.0)
