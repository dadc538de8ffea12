"""The feedback clock of one partition of feedback.v1 (services/feedback_ingest/ingest.py).

Pure. Liveness ages servers on it. It runs on the time the broker appended each record
(feedback.v1 is LogAppendTime: one clock for every agent), so an ingest that is behind — a
backlog after a rebalance, a busy host — ages nobody for being late; and it skips silences
longer than one heartbeat interval, so a partition that stops altogether (the bus, the ingest's
link, the broker leading it) ages none of its servers, while one server silent among others that
keep reporting ages as before.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FeedbackClock:
    last_event: float | None = None  # broker time of the last record
    last_rx: float = 0.0  # real time it was handled
    skipped_s: float = 0.0  # silences of the partition longer than one interval, summed

    def heard(self, event: float, now: float, gap_s: float) -> float:
        """A record appended at ``event`` was handled at real time ``now``: the clock's reading
        for it, skipping the silence before it."""
        if self.last_event is not None:
            if event - self.last_event > gap_s:
                self.skipped_s += event - self.last_event - gap_s
            event = max(event, self.last_event)  # brokers' clocks may differ a little
        self.last_event, self.last_rx = event, now
        return event - self.skipped_s

    def at(self, now: float, gap_s: float) -> float:
        """The clock at real time ``now``: it goes on with real time from the last record for
        at most one interval, then stops until the next."""
        if self.last_event is None:
            return now
        return self.last_event + min(max(0.0, now - self.last_rx), gap_s) - self.skipped_s
