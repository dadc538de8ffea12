"""What every long-running pipeline process does the same way: log to stderr, stop on signals.

The live lab starts these services as processes and stops them with SIGTERM; they must finish
their current batch, commit, and exit 0.
"""

from __future__ import annotations

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
