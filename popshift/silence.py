"""Leases that do not run out because the bus went quiet (docs/failure.md#kafka-outages).

A policy's lease says "the engine is alive and still means it". When a writer (or the engine)
hears nothing at all on the bus — no policy, no pop-load, no status from any PoP — it cannot
tell a dead engine from a Kafka outage, and a renewal could not have arrived anyway; so its
leases stop ageing for the silent stretch, at most ``grace_s`` in a row, after which they run
out as usual. A dead control plane is therefore back to anycast within lease + grace even when
its bus went silent with it; a Kafka outage shorter than the grace changes nothing. When the
bus comes back, every lease runs at least one full lease from that moment (:meth:`after`):
the services upstream of a renewal (ingest, analytics) rejoin their groups one by one, and the
engine gets the time a renewal normally has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BusSilence:
    silence_s: float = 3.0
    """No message at all for this long is a silent bus (several pop-load/status periods)."""
    grace_s: float = 120.0
    """The most a silent stretch may hold leases, in a row."""
    last_heard: float | None = None
    granted_s: float = 0.0  # of the current silent stretch, already added to the leases
    total_granted_s: float = 0.0

    last_stretch: tuple[float, float] = (0.0, 0.0)
    """(end, seconds held) of the latest silent stretch: a message issued before its end was
    held up by it."""

    def heard(self, now: float) -> None:
        """A message arrived: the bus works."""
        if self.last_heard is not None and now - self.last_heard > self.silence_s:
            self.last_stretch = (now, min(now - self.last_heard, self.grace_s))
        self.last_heard = now if self.last_heard is None else max(self.last_heard, now)
        self.granted_s = 0.0

    def after(self, lease_until: float, lease_s: float) -> float:
        """A lease's end, at least one full lease after the bus came back from a silence."""
        end, held = self.last_stretch
        return max(lease_until, end + lease_s) if held > 0.0 else lease_until

    def held_up(self, issued_at: float) -> float:
        """How long the latest silence held up a message issued at ``issued_at``: its lease
        (renewals queued while Kafka was away) is longer by that much."""
        end, held = self.last_stretch
        return held if issued_at < end else 0.0

    def pause(self, now: float) -> float:
        """Seconds to add to every lease now: the silent stretch so far (from the last message,
        once it is longer than ``silence_s``), up to the grace, less what was granted already."""
        if self.last_heard is None:
            return 0.0
        quiet = now - self.last_heard
        want = min(quiet, self.grace_s) if quiet > self.silence_s else 0.0
        grant = max(0.0, want - self.granted_s)
        self.granted_s += grant
        self.total_granted_s += grant
        return grant

    def expired(self, lease_until: float, now: float) -> bool:
        """The lease ran out and the bus was heard after its end (so a renewal could have
        come), or it ran out ``silence_s`` ago (a silence that outlived the grace)."""
        if now < lease_until:
            return False
        return (
            self.last_heard is None
            or self.last_heard >= lease_until
            or now >= lease_until + self.silence_s
        )
