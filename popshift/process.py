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
from typing import TypeVar

from confluent_kafka import KafkaException

from popshift.bus import DeliveryFailed, create_topics, transient
from popshift.settings import Settings
from popshift.topics import Topic

T = TypeVar("T")

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
) -> int:
    """Handle messages as they come (``poll(max_wait_s)``) and ``tick`` every ``interval_s``.

    A transient Kafka error is logged and waited out: the service keeps its state and its ticks
    (liveness, drains, re-solves) and catches up when the broker returns. ``DeliveryFailed``
    (from ``poll`` or ``tick``) is logged and counted, never fatal: what was not sent stays with
    the service, which sends it again (:class:`popshift.bus.Outbox`). Returns the number of
    such Kafka failures seen.
    """
    failures = 0
    next_tick = clock()
    while not stop.is_set():
        try:
            poll(min(0.2, max(0.0, next_tick - clock())))
        except (KafkaException, DeliveryFailed) as exc:
            if isinstance(exc, KafkaException) and not transient(exc):
                raise
            failures += 1
            _log_failure("poll", exc, failures)
            stop.wait(0.5)
        if clock() >= next_tick:
            try:
                tick()
            except (KafkaException, DeliveryFailed) as exc:
                if isinstance(exc, KafkaException) and not transient(exc):
                    raise
                failures += 1
                _log_failure("tick", exc, failures)
            next_tick = max(next_tick + interval_s, clock())
    return failures


def _log_failure(where: str, exc: Exception, failures: int) -> None:
    if failures <= 10 or failures % 100 == 0:
        log.warning("Kafka (%s, failure %d): %s (going on)", where, failures, exc)


def until_ready(
    step: Callable[[], T],
    what: str,
    stop: threading.Event,
    errors: tuple[type[BaseException], ...] = (KafkaException, DeliveryFailed),
    backoff_s: tuple[float, float] = (0.5, 5.0),
) -> T | None:
    """``step()`` once it succeeds: a service that starts while Kafka (or Redis) is down waits,
    logs every attempt, and starts working when it comes. None if ``stop`` was set first."""
    wait, longest = backoff_s
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            return step()
        except errors as exc:
            log.warning(
                "%s: not ready (attempt %d), retrying in %.1fs: %s", what, attempt, wait, exc
            )
        stop.wait(wait)
        wait = min(longest, wait * 2)
    return None


def until_topics(settings: Settings, wanted: list[Topic], what: str, stop: threading.Event) -> bool:
    """Wait for Kafka and create the service's topics (under the settings' prefix): True once
    they exist, False if ``stop`` was set first."""
    names = [settings.topic(t) for t in wanted]

    def create() -> bool:
        create_topics(settings.kafka(), names, settings.topic_partitions, timeout=5.0)
        return True

    return until_ready(create, f"{what}: Kafka", stop) is not None
