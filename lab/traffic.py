"""One client region's traffic for a scenario: short requests and long-lived connections until
SIGTERM, every record on a clock shared with the scenario.

`lab.app.loadgen run` has a fixed duration; a scenario does not know in advance when
the policy engine will cancel, and the long connections must end cleanly (not be killed) for
"zero failed long-lived connections" to mean anything. So this runs the load generator's own
`short_request` and `long_connection` until told to stop, then closes every long connection
properly. `start` in the records is seconds since `--epoch` (a wall-clock time), so records of
all regions and the scenario's timeline line up.

    python -m lab.traffic --target 10.200.0.1 --rate 50 --long 6 --epoch T --out F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

from lab.app.loadgen import Plan, Recorder, long_connection, short_request


async def run(plan: Plan, rec: Recorder) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    longs = [asyncio.create_task(long_connection(plan, rec, s, stop)) for s in range(plan.long)]
    shorts: set[asyncio.Task[None]] = set()
    inflight = asyncio.Semaphore(plan.max_inflight)

    async def one() -> None:
        async with inflight:
            await short_request(plan, rec)

    if plan.rate > 0:
        period = 1.0 / plan.rate
        next_at = time.monotonic()
        while not stop.is_set():
            task = asyncio.create_task(one())
            shorts.add(task)
            task.add_done_callback(shorts.discard)
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    await stop.wait()
    await asyncio.gather(*longs, *shorts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="short requests per second")
    parser.add_argument("--long", type=int, default=0, help="long-lived connections")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between echoes")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--epoch", type=float, default=0.0, help="wall time records count from")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines records")
    args = parser.parse_args(argv)
    plan = Plan(
        target=args.target,
        rate=args.rate,
        long=args.long,
        interval=args.interval,
        timeout=args.timeout,
    )
    with open(args.out, "a") as out:
        rec = Recorder(out, clock=time.time)
        rec.t0 = args.epoch or rec.t0
        asyncio.run(run(plan, rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
