"""What the load generator records and how a run is summarised: pure, so it is unit-tested.

Users judge popshift by "does no established connection break": every failure must therefore
be recorded with a class that says what broke (the connect, the connection, or the answer),
never folded into a generic error count.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import NotRequired, TypedDict

from lab.app.wire import HttpStatusError, ProtocolError


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # RST to the SYN: nobody listens where the SYN landed
    CONNECT_TIMEOUT = "connect_timeout"  # SYN unanswered
    UNREACHABLE = "unreachable"  # ICMP / no route
    RESET = "reset"  # an established connection got an RST (or EPIPE)
    TIMEOUT = "timeout"  # connected, then an answer did not come in time
    EOF = "eof"  # the server closed before the exchange was complete
    HTTP_ERROR = "http_error"  # an answer with an unexpected status
    BAD_RESPONSE = "bad_response"  # an answer that is not the lab's protocol
    ERROR = "error"  # anything else (the record's `error` says what)


class Kind(StrEnum):
    SHORT = "short"  # one connection, one GET /whoami
    LONG = "long"  # one long-lived echo connection


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL}


class ConnectTimeout(TimeoutError):
    """The handshake did not finish in time (a plain TimeoutError came after connecting)."""


def classify(exc: BaseException | None) -> Outcome:
    """Map how an exchange ended (None: it did not fail) to an outcome."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Outcome.RESET
    if isinstance(exc, ConnectTimeout):
        return Outcome.CONNECT_TIMEOUT
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, asyncio.IncompleteReadError):
        return Outcome.EOF
    if isinstance(exc, HttpStatusError):
        return Outcome.HTTP_ERROR
    if isinstance(exc, ProtocolError | json.JSONDecodeError | UnicodeDecodeError):
        return Outcome.BAD_RESPONSE
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return Outcome.UNREACHABLE
    return Outcome.ERROR


@dataclass(frozen=True)
class Record:
    """One short request, or one long connection's whole life, as one JSON line."""

    kind: Kind
    start: float  # seconds since the run started
    duration_s: float
    outcome: Outcome
    pop: str = ""  # who answered first ("" if nobody did)
    server: str = ""
    error: str = ""
    exchanges: int = 0  # long: echo round trips completed
    servers_seen: int = 0  # long: distinct servers that answered on this one connection
    max_rtt_ms: float = 0.0  # long: the slowest echo round trip; short: the request's latency
    conn: int = -1  # long: which of the N long-lived slots
    sport: int = 0  # short: the client's source port (0: not connected), so a test can hash
    # the connection's 5-tuple and predict which PoP must process it

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        raw = json.loads(line)
        raw["kind"] = Kind(raw["kind"])
        raw["outcome"] = Outcome(raw["outcome"])
        return cls(**raw)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(v for v in values if v).items()))


class Latency(TypedDict):
    p50: float
    p99: float
    max: float


class Section(TypedDict):
    total: int
    ok: int
    failed: int
    by_outcome: dict[str, int]
    by_pop: dict[str, int]
    by_server: dict[str, int]
    latency_ms: NotRequired[Latency]


class LongSection(Section):
    exchanges: int  # echo round trips completed, over all long connections
    server_changes: int  # connections answered by more than one server: the lab is broken


class Summary(TypedDict):
    short: Section
    long: LongSection
    failed: int


def _section(records: Sequence[Record]) -> Section:
    ok = [r for r in records if r.outcome is Outcome.OK]
    section = Section(
        total=len(records),
        ok=len(ok),
        failed=len(records) - len(ok),
        by_outcome=_counts(r.outcome.value for r in records),
        by_pop=_counts(r.pop for r in records),
        by_server=_counts(r.server for r in records),
    )
    rtts = [r.max_rtt_ms for r in ok]
    if rtts:
        section["latency_ms"] = Latency(
            p50=round(percentile(rtts, 50), 3),
            p99=round(percentile(rtts, 99), 3),
            max=round(max(rtts), 3),
        )
    return section


def summarize(records: Sequence[Record]) -> Summary:
    """Counts per kind, outcome, PoP and server: what a test or an operator reads after a run.

    For short requests `latency_ms` is over the requests; for long connections it is over each
    connection's slowest echo round trip.
    """
    short = [r for r in records if r.kind is Kind.SHORT]
    long = [r for r in records if r.kind is Kind.LONG]
    long_section = LongSection(
        **_section(long),
        exchanges=sum(r.exchanges for r in long),
        server_changes=sum(1 for r in long if r.servers_seen > 1),
    )
    return Summary(
        short=_section(short),
        long=long_section,
        failed=sum(1 for r in records if r.outcome is not Outcome.OK),
    )
