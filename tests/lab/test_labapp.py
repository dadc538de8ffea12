"""The lab application's pure parts, and the server and load generator over loopback.

These need no root: they prove that the outcome classes and the summary are right, so that the
namespace tests can trust what the load generator reports.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from lab.app import burner, wire
from lab.app.loadgen import Plan, run, whoami
from lab.app.results import (
    ConnectTimeout,
    Kind,
    Outcome,
    Record,
    classify,
    percentile,
    summarize,
)
from lab.app.server import Identity, start

T = TypeVar("T")


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, Outcome.OK),
        (ConnectionRefusedError(), Outcome.REFUSED),
        (ConnectTimeout(), Outcome.CONNECT_TIMEOUT),
        (TimeoutError(), Outcome.TIMEOUT),
        (ConnectionResetError(), Outcome.RESET),
        (BrokenPipeError(), Outcome.RESET),
        (asyncio.IncompleteReadError(b"", None), Outcome.EOF),
        (wire.HttpStatusError(503), Outcome.HTTP_ERROR),
        (wire.ProtocolError("x"), Outcome.BAD_RESPONSE),
        (json.JSONDecodeError("x", "", 0), Outcome.BAD_RESPONSE),
        (OSError(errno.EHOSTUNREACH, "no route"), Outcome.UNREACHABLE),
        (OSError(errno.ENETUNREACH, "no net"), Outcome.UNREACHABLE),
        (OSError(errno.EIO, "io"), Outcome.ERROR),
        (RuntimeError("?"), Outcome.ERROR),
    ],
)
def test_classify_names_what_broke(exc, outcome):
    assert classify(exc) is outcome


def _rec(kind: Kind, outcome: Outcome, pop: str = "", server: str = "", **kw: Any) -> Record:
    return Record(kind, 0.0, 0.1, outcome, pop=pop, server=server, **kw)


def test_summary_counts_every_record_once():
    records = [
        _rec(Kind.SHORT, Outcome.OK, "a", "a-s1", max_rtt_ms=1.0),
        _rec(Kind.SHORT, Outcome.OK, "a", "a-s2", max_rtt_ms=3.0),
        _rec(Kind.SHORT, Outcome.OK, "b", "b-s1", max_rtt_ms=2.0),
        _rec(Kind.SHORT, Outcome.REFUSED),
        _rec(Kind.SHORT, Outcome.CONNECT_TIMEOUT),
        _rec(Kind.LONG, Outcome.OK, "a", "a-s1", exchanges=50, servers_seen=1, max_rtt_ms=4.0),
        _rec(Kind.LONG, Outcome.RESET, "a", "a-s2", exchanges=7, servers_seen=1),
        _rec(Kind.LONG, Outcome.OK, "a", "a-s1", exchanges=50, servers_seen=2, max_rtt_ms=5.0),
    ]
    s = summarize(records)
    assert s["failed"] == 3
    assert s["short"] == {
        "total": 5,
        "ok": 3,
        "failed": 2,
        "by_outcome": {"connect_timeout": 1, "ok": 3, "refused": 1},
        "by_pop": {"a": 2, "b": 1},
        "by_server": {"a-s1": 1, "a-s2": 1, "b-s1": 1},
        "latency_ms": {"p50": 2.0, "p99": 3.0, "max": 3.0},
    }
    long = s["long"]
    assert isinstance(long, dict)
    assert (long["total"], long["ok"], long["failed"]) == (3, 2, 1)
    assert long["by_outcome"] == {"ok": 2, "reset": 1}
    assert long["exchanges"] == 107
    assert long["server_changes"] == 1


def test_summary_of_nothing_is_zeros():
    s = summarize([])
    assert s["failed"] == 0
    assert s["short"] == {
        "total": 0,
        "ok": 0,
        "failed": 0,
        "by_outcome": {},
        "by_pop": {},
        "by_server": {},
    }


def test_percentile_is_nearest_rank():
    assert percentile([5.0], 99) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_record_round_trips_through_json():
    r = _rec(Kind.LONG, Outcome.TIMEOUT, "c", "c-s2", error="TimeoutError: ", exchanges=3, conn=1)
    assert Record.from_json(r.to_json()) == r


def test_parse_head_rejects_garbage():
    head = wire.parse_head(b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-A:  b \r\n\r\n")
    assert head.start == ("GET", "/whoami", "HTTP/1.1")
    assert head.header("x-a") == "b"
    with pytest.raises(wire.ProtocolError):
        wire.parse_head(b"nonsense\r\n\r\n")
    with pytest.raises(wire.ProtocolError):
        wire.parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")


def test_burner_spins_for_its_time():
    assert burner.busy_share(0.25) == pytest.approx((0.025, 0.075))
    assert burner.busy_share(7.0) == (0.1, 0.0)
    assert burner.spin(0.05) > 0
    assert burner.burn(procs=2, seconds=0.1) == 2


async def _with_server(coro_factory: Callable[[int], Awaitable[T]]) -> T:
    server = await start(Identity(pop="z", server="z-s9"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await coro_factory(port)
    finally:
        server.close()


def test_whoami_says_who_answered():
    answer = asyncio.run(_with_server(lambda port: whoami(Plan("127.0.0.1", port))))
    assert (answer["pop"], answer["server"]) == ("z", "z-s9")
    assert str(answer["client"]).startswith("127.0.0.1:")


def test_loadgen_records_and_summary_agree_over_loopback():
    out = io.StringIO()
    plan = Plan("127.0.0.1", rate=40.0, duration=1.0, long=2, interval=0.1)
    records = asyncio.run(
        _with_server(lambda port: run(Plan(**{**plan.__dict__, "port": port}), out))
    )
    lines = [Record.from_json(line) for line in out.getvalue().splitlines()]
    assert lines == records
    s = summarize(records)
    assert s["short"]["total"] == s["short"]["ok"] == 40
    assert s["short"]["by_server"] == {"z-s9": 40}
    assert s["long"]["total"] == s["long"]["ok"] == 2
    assert 2 * 8 <= s["long"]["exchanges"] <= 2 * 11
    assert s["failed"] == 0


def test_loadgen_records_refused_connections():
    async def refused() -> list[Record]:
        server = await start(Identity(pop="z", server="z-s9"), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        return await run(Plan("127.0.0.1", port, rate=20.0, duration=0.5, long=1))

    s = summarize(asyncio.run(refused()))
    assert s["short"]["by_outcome"] == {"refused": 10}
    assert s["long"]["by_outcome"].get("refused", 0) >= 1
    assert s["long"]["ok"] == 0
