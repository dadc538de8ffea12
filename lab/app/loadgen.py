"""Load generator for the lab: short requests at a fixed rate plus N long-lived connections.

Runs inside a client namespace. Short requests are open-loop (one new connection every 1/rate
seconds whatever the latency, as real users arrive), so new-connection placement is exercised;
long connections exchange one line every `interval` and must never break, which is the promise
popshift makes. Every request and every long connection becomes one JSON line (written as it
ends, so a killed run keeps what it saw); the summary (results.summarize) goes to stdout.

    python -m lab.app.loadgen run --target 10.200.1.1 --rate 50 --long 4 --duration 10
    python -m lab.app.loadgen whoami --target 10.200.1.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lab.app import wire
from lab.app.results import (
    ConnectTimeout,
    Kind,
    Outcome,
    Record,
    classify,
    summarize,
)


@dataclass(frozen=True)
class Plan:
    target: str
    port: int = 80
    rate: float = 10.0  # short requests per second
    duration: float = 10.0
    long: int = 0  # long-lived connections kept open
    interval: float = 0.1  # seconds between echo exchanges on a long connection
    timeout: float = 2.0  # connect timeout, and per-answer timeout
    reconnect: bool = True  # reopen a long connection that failed (a new record)
    max_inflight: int = 512  # short requests open at once; beyond, the schedule waits


class Recorder:
    """Collects records, writing each as a JSON line the moment it is complete."""

    def __init__(self, out: TextIO | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.t0 = clock()
        self.records: list[Record] = []

    def since_start(self) -> float:
        return self.clock() - self.t0

    def add(self, record: Record) -> None:
        self.records.append(record)
        if self.out is not None:
            self.out.write(record.to_json() + "\n")
            self.out.flush()


async def _connect(plan: Plan) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        async with asyncio.timeout(plan.timeout):
            return await asyncio.open_connection(plan.target, plan.port)
    except TimeoutError as exc:
        raise ConnectTimeout(f"no handshake within {plan.timeout}s") from exc


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


async def _expect(reader: asyncio.StreamReader, status: int) -> wire.Head:
    head = await wire.read_head(reader)
    if head is None:
        raise asyncio.IncompleteReadError(b"", None)
    got = wire.status_of(head)
    if got != status:
        raise wire.HttpStatusError(got)
    return head


def _identity(answer: object) -> tuple[str, str]:
    if not isinstance(answer, dict) or "pop" not in answer or "server" not in answer:
        raise wire.ProtocolError(f"not an identity: {answer!r}")
    return str(answer["pop"]), str(answer["server"])


async def whoami(plan: Plan, seen: dict[str, int] | None = None) -> dict[str, object]:
    """One GET /whoami on a new connection; raises whatever went wrong. `seen` gets the
    connection's source port ("sport") as soon as it is connected."""
    reader, writer = await _connect(plan)
    if seen is not None:
        sockname = writer.get_extra_info("sockname")
        seen["sport"] = int(sockname[1]) if sockname else 0
    try:
        # No "Connection: close": the client closes first, so the TIME_WAIT stays with the
        # client, whose kernel then never reuses the source port within a minute. A server
        # closing first would keep the 5-tuple in TIME_WAIT, and a new connection reusing the
        # port would be processed by that server (it owns the flow) whatever its bucket says.
        writer.write(wire.request("GET", "/whoami", plan.target, {}))
        async with asyncio.timeout(plan.timeout):
            head = await _expect(reader, 200)
            answer = json.loads(await wire.read_body(reader, head))
        _identity(answer)
        return dict(answer)
    finally:
        await _close(writer)


async def short_request(plan: Plan, rec: Recorder) -> None:
    start = rec.since_start()
    answer: dict[str, object] = {}
    seen: dict[str, int] = {}
    exc: BaseException | None = None
    try:
        answer = await whoami(plan, seen)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, RuntimeError) as e:
        exc = e
    duration = rec.since_start() - start
    rec.add(
        Record(
            kind=Kind.SHORT,
            start=round(start, 4),
            duration_s=round(duration, 4),
            outcome=classify(exc),
            pop=str(answer.get("pop", "")),
            server=str(answer.get("server", "")),
            error="" if exc is None else f"{type(exc).__name__}: {exc}",
            max_rtt_ms=round(duration * 1000.0, 3) if exc is None else 0.0,
            sport=seen.get("sport", 0),
        )
    )


@dataclass
class _Life:
    """What one long connection saw, filled in as it runs."""

    exchanges: int = 0
    max_rtt_ms: float = 0.0
    first: tuple[str, str] = ("", "")
    servers: frozenset[str] = frozenset()


async def _echo_loop(plan: Plan, life: _Life, stop: asyncio.Event) -> None:
    reader, writer = await _connect(plan)
    try:
        upgrade = {"Connection": "Upgrade", "Upgrade": wire.ECHO_PROTOCOL}
        writer.write(wire.request("GET", "/stream", plan.target, upgrade))
        async with asyncio.timeout(plan.timeout):
            await _expect(reader, 101)
        next_at = time.monotonic()
        while not stop.is_set():
            sent = time.monotonic()
            writer.write(f"{life.exchanges}\n".encode())
            async with asyncio.timeout(plan.timeout):
                await writer.drain()
                line = await reader.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            pop, server = _identity(json.loads(line))
            rtt = (time.monotonic() - sent) * 1000.0
            life.max_rtt_ms = max(life.max_rtt_ms, rtt)
            life.exchanges += 1
            if life.first == ("", ""):
                life.first = (pop, server)
            life.servers |= {server}
            next_at += plan.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                    await stop.wait()
    finally:
        await _close(writer)


async def long_connection(plan: Plan, rec: Recorder, slot: int, stop: asyncio.Event) -> None:
    """Keep one echo connection open until `stop`; each connection's life is one record."""
    while not stop.is_set():
        start = rec.since_start()
        life = _Life()
        exc: BaseException | None = None
        try:
            await _echo_loop(plan, life, stop)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, RuntimeError) as e:
            exc = e
        rec.add(
            Record(
                kind=Kind.LONG,
                start=round(start, 4),
                duration_s=round(rec.since_start() - start, 4),
                outcome=classify(exc),
                pop=life.first[0],
                server=life.first[1],
                error="" if exc is None else f"{type(exc).__name__}: {exc}",
                exchanges=life.exchanges,
                servers_seen=len(life.servers),
                max_rtt_ms=round(life.max_rtt_ms, 3),
                conn=slot,
            )
        )
        if exc is None or not plan.reconnect:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(plan.interval):
                await stop.wait()


async def run(plan: Plan, out: TextIO | None = None) -> list[Record]:
    """Run the plan; return every record (also written to `out` as they complete)."""
    rec = Recorder(out)
    stop = asyncio.Event()
    longs = [
        asyncio.create_task(long_connection(plan, rec, slot, stop)) for slot in range(plan.long)
    ]
    inflight = asyncio.Semaphore(plan.max_inflight)
    shorts: set[asyncio.Task[None]] = set()

    async def one() -> None:
        async with inflight:
            await short_request(plan, rec)

    count = int(plan.rate * plan.duration)
    for i in range(count):
        await asyncio.sleep(max(0.0, i / plan.rate - rec.since_start()))
        task = asyncio.create_task(one())
        shorts.add(task)
        task.add_done_callback(shorts.discard)
    await asyncio.sleep(max(0.0, plan.duration - rec.since_start()))
    stop.set()
    await asyncio.gather(*longs, *shorts)
    return rec.records


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        target=args.target,
        port=args.port,
        rate=getattr(args, "rate", 0.0),
        duration=getattr(args, "duration", 0.0),
        long=getattr(args, "long", 0),
        interval=getattr(args, "interval", 0.1),
        timeout=args.timeout,
        reconnect=not getattr(args, "no_reconnect", False),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.out:
        with open(args.out, "w") as out:
            records = asyncio.run(run(plan, out))
    else:
        records = asyncio.run(run(plan))
    summary = {"plan": vars(args) | {"func": None}, **summarize(records)}
    text = json.dumps(summary, indent=2, default=str)
    if args.summary:
        Path(args.summary).write_text(text + "\n")
    print(text)
    return 0


def _cmd_whoami(args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(whoami(_plan(args)))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, RuntimeError) as exc:
        outcome = classify(exc)
        print(json.dumps({"outcome": outcome.value, "error": str(exc)}))
        return 1
    print(json.dumps({"outcome": Outcome.OK.value, **answer}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="popshift lab load generator")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, func in (("run", _cmd_run), ("whoami", _cmd_whoami)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--target", required=True, help="the anycast VIP")
        p.add_argument("--port", type=int, default=80)
        p.add_argument("--timeout", type=float, default=2.0)
    run_p = sub.choices["run"]
    run_p.add_argument("--rate", type=float, default=10.0, help="short requests per second")
    run_p.add_argument("--duration", type=float, default=10.0, help="seconds")
    run_p.add_argument("--long", type=int, default=0, help="long-lived connections")
    run_p.add_argument("--interval", type=float, default=0.1, help="seconds between echoes")
    run_p.add_argument("--no-reconnect", action="store_true")
    run_p.add_argument("--out", help="JSON-lines file of every record")
    run_p.add_argument("--summary", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
