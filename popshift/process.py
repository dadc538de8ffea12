"""What every long-running pipeline process does the same way: log to stderr, stop on signals.

The live lab starts these services as processes and stops them with SIGTERM; they must finish
their current batch, commit, and exit 0.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException

from popshift.bus import transient

log = logging.getLogger("popshift")


def setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop ends after its current step."""

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the per-message path of a long-running service.

    Every validated message allocates a few container objects, which trigger young collections,
    which promote whatever happens to be alive, which trigger full collections over everything
    the process ever imported (a faust worker holds hundreds of thousands of objects). Objects
    that exist after start-up live as long as the process: ``freeze`` moves them out of every
    collection. A larger young generation makes collections rarer; reference counting still
    frees the per-message objects at once, only cycles wait a little longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_ticking(
    poll: Callable[[float], object],
    tick: Callable[[], object],
    interval_s: float,
    stop: threading.Event,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Handle messages as they come (``poll(max_wait_s)``) and ``tick`` every ``interval_s``.

    A transient Kafka error is logged and waited out: the service keeps its state and its ticks
    (liveness, drains, re-solves) and catches up when the broker returns.
    """
    next_tick = clock()
    while not stop.is_set():
        try:
            poll(min(0.2, max(0.0, next_tick - clock())))
        except KafkaException as exc:
            if not transient(exc):
                raise
            log.warning("Kafka: %s (retrying)", exc)
            stop.wait(0.5)
        if clock() >= next_tick:
            tick()
            next_tick = max(next_tick + interval_s, clock())
