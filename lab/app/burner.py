"""CPU burner: N processes spinning for T seconds, to overload a lab server on purpose.

Run inside a server namespace (`python -m lab exec a-s1 -- python -m lab.app.burner -n 2 -t 30`)
so the load shows up where the feedback agent of that server looks. `--duty` below 1 spins only
that share of every 100 ms slice, for a load level between idle and one full core per process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import time

SLICE_S = 0.1


def busy_share(duty: float, slice_s: float = SLICE_S) -> tuple[float, float]:
    """(spin, sleep) seconds per slice for a duty cycle clamped to 0..1."""
    duty = min(max(duty, 0.0), 1.0)
    return duty * slice_s, (1.0 - duty) * slice_s


def spin(seconds: float, duty: float = 1.0) -> int:
    """Burn CPU for `seconds` at `duty`; returns the loop count (so the work is not optimised)."""
    end = time.monotonic() + seconds
    busy, idle = busy_share(duty)
    loops = 0
    while (now := time.monotonic()) < end:
        stop_spin = min(end, now + busy)
        while time.monotonic() < stop_spin:
            loops += 1
        if idle > 0.0:
            time.sleep(min(idle, max(0.0, end - time.monotonic())))
    return loops


def burn(procs: int, seconds: float, duty: float = 1.0) -> int:
    """Run `procs` spinning processes to the end; returns how many ran.

    They are daemons: when the parent exits early (main turns SIGTERM into SystemExit),
    multiprocessing terminates them instead of leaving them spinning.
    """
    workers = [
        multiprocessing.Process(target=spin, args=(seconds, duty), daemon=True)
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(workers)


def _exit_on_signal(sig: int, _frame: object) -> None:
    raise SystemExit(128 + sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="popshift lab CPU burner")
    parser.add_argument("-n", "--procs", type=int, default=1)
    parser.add_argument("-t", "--seconds", type=float, default=10.0)
    parser.add_argument("--duty", type=float, default=1.0, help="share of each 100 ms to spin")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(f"burner: {burn(args.procs, args.seconds, args.duty)} procs for {args.seconds}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
