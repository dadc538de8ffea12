"""What an agent can measure of an overloaded PoP: busy cores capped at capacity, and latency.

A real agent reads /proc/stat or a cgroup's CPU time: a PoP asked for 1.4x its cores shows 100 %,
not 140 %. Past saturation the excess shows only as waiting: requests queue, service latency and
the probes' p95 grow, and probes time out. The simulator's controllers (popshift and the
baselines) therefore see capped busy cores and a probe latency from this queueing model; only
the oracle keeps the true demand.

The model, per PoP (``QueueModel``):
- below saturation, each server is an M/M/c queue (c = cores per server) and the mean wait is
  Sakasegawa's approximation, ``Wq = S rho^(sqrt(2(c+1)) - 1) / (c (1 - rho))`` (H. Sakasegawa,
  "An approximation formula Lq = alpha rho^beta / (1 - rho)", Annals of the Institute of
  Statistical Mathematics 29, 1977); the wait of an M/M/c queue is exponential past zero, so
  its p95 is about ``ln 20 = 3.0`` means;
- at and above saturation, a fluid backlog: work beyond capacity queues (``backlog += (demand -
  capacity) dt``) and drains when demand falls below capacity again; a request waits
  ``backlog / capacity``. The backlog is bounded by ``max_wait_s`` of capacity (listen queues
  overflow and clients give up beyond it), so the probe's p95 saturates at ``probe_timeout_ms``.

The probe's p95 = service time + p95 of the wait, capped at the probe's timeout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.world import FloatArray

P95_OF_EXPONENTIAL = math.log(20.0)


@dataclass(frozen=True)
class QueueParams:
    service_ms: float = 20.0
    """Mean service time of one probed request on an idle server."""
    cores_per_server: float = 64.0
    probe_timeout_ms: float = 2000.0
    max_wait_s: float = 5.0


class QueueModel:
    """Every PoP's backlog and its probes' p95 latency, stepped once a tick."""

    def __init__(self, n_pops: int, params: QueueParams) -> None:
        self.params = params
        self.backlog = np.zeros(n_pops)  # core-seconds of queued work
        self.p95_ms = np.full(n_pops, params.service_ms)
        self._beta = math.sqrt(2.0 * (params.cores_per_server + 1.0)) - 1.0

    def step(self, demand: FloatArray, capacity: FloatArray, dt: float) -> FloatArray:
        """Advance the backlogs by ``dt`` under ``demand`` cores; return the probe p95 (ms)."""
        p = self.params
        up = capacity > 0.0
        self.backlog = np.where(
            up,
            np.clip(self.backlog + (demand - capacity) * dt, 0.0, p.max_wait_s * capacity),
            0.0,
        )
        cap = np.where(up, capacity, 1.0)
        rho = np.clip(demand / cap, 0.0, 0.999)
        queue_wait_ms = p.service_ms * rho**self._beta / (p.cores_per_server * (1.0 - rho))
        backlog_wait_ms = 1000.0 * self.backlog / cap
        # A fluid backlog is served in order: every request waits about the same.
        wait_p95_ms = np.where(
            self.backlog > 0.0, backlog_wait_ms, P95_OF_EXPONENTIAL * queue_wait_ms
        )
        self.p95_ms = np.where(up, np.minimum(p.service_ms + wait_p95_ms, p.probe_timeout_ms), 0.0)
        return self.p95_ms


def measured_busy(demand: FloatArray, capacity: FloatArray) -> FloatArray:
    """Busy cores an agent reports: the demand, but never more than the cores there are."""
    return np.minimum(demand, capacity)
