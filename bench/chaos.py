"""Chaos: the overload scenario while every control-plane process and dependency fails in turn.

    sudo .venv/bin/python bench/chaos.py [--out DIR] [--kafka-down-s 30]     (= make chaos)

One lab and one set of services (lab.harness.Harness, the services restarted 2 s after they
exit, as systemd's Restart=always would). PoP a overloads and forwards to b (b to c); then, in
turn: kill -9 of the policy engine, each table writer, analytics, ingest and each forwarder
sync; Kafka stopped for 30 s; Redis restarted empty; a second policy engine beside the first;
last the engine killed for good, which the leases must turn into local processing everywhere.
lab/chaos.py says what is measured and how. About 8 minutes on two cores.

Prints one line per fault, then the lease run, the placement check and, last,
``chaos_max_recovery_s: S`` (the slowest fault's time back to the same policy, tables and maps)
and ``chaos_broken_connections: N`` (long-lived connections broken over the whole run; must be
0). Exit status 1 when any fault was not recovered, broke a connection, stopped forwarding or
made a service exit that was not killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from lab import chaos
from lab.harness import Harness


def log(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--kafka-down-s", type=float, default=chaos.KAFKA_DOWN_S)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (the namespace lab)")
    # SIGTERM (a CI timeout, `kill`) unwinds like ^C: the harness stops every service it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out = args.out or Path(tempfile.mkdtemp(prefix="popshift-chaos-"))
    (out / "logs" / "pids").unlink(missing_ok=True)
    started = time.monotonic()
    with Harness(out, log=log, extra_env=chaos.chaos_env()) as h:
        h.progress_s = 15.0
        try:
            result = chaos.run(h, kafka_down_s=args.kafka_down_s)
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
            h.result.save(out / "result.json")
    print(f"\nchaos run in {time.monotonic() - started:.0f}s, record {out / 'result.json'}")
    for f in result.faults:
        print(chaos.format_fault(f))
    print(chaos.format_lease(result.lease))
    print(f"placement: {result.placement.detail}")
    print(f"long-lived connections: {result.longs_total}, broken {result.broken_total}")
    bad = [f.name for f in result.faults if not f.ok]
    if bad or not result.lease.ok or not result.placement.ok:
        print(f"FAILED: {bad}{'' if result.lease.ok else ' + lease run'}", file=sys.stderr)
    print(f"chaos_max_recovery_s: {result.max_recovery_s:.1f}")
    print(f"chaos_broken_connections: {result.broken_total}")
    ok = not bad and result.lease.ok and result.placement.ok and result.broken_total == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
