"""The feedback clock: real time minus the silences of the bus (services/feedback_ingest/ingest.py).

Pure. Liveness ages servers on it, so that a silence of a whole partition of feedback (the bus,
the ingest's link, a broker leading it) ages nobody, while one server silent among others that
keep reporting ages as before.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FeedbackClock:
    last_rx: float | None = None  # real time of the last feedback
    skipped_s: float = 0.0  # silences longer than one heartbeat interval, summed

    def heard(self, now: float, gap_s: float) -> float:
        """Feedback arrived at real time ``now``: the clock resumes, skipping the silence."""
        if self.last_rx is not None and now - self.last_rx > gap_s:
            self.skipped_s += now - self.last_rx - gap_s
        self.last_rx = now
        return now - self.skipped_s

    def at(self, now: float, gap_s: float) -> float:
        """The clock at real time ``now``: stopped one interval after the last feedback."""
        if self.last_rx is not None and now - self.last_rx > gap_s:
            now = self.last_rx + gap_s
        return now - self.skipped_s
