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
