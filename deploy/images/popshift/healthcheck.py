"""The popshift image's HEALTHCHECK: the service's Prometheus endpoint answers /metrics.

Every service serves it once its settings are read and its telemetry started (README,
"Metrics"); a service that exited, hung before that, or lost its port fails the check. The port
is POPSHIFT_METRICS_PORT, else the service's default (tests/containers/test_images.py checks
these against the settings classes). A one-shot command (`popshift topics create`) or a port
of 0 serves nothing: healthy while it runs.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORTS = {
    "agent": 9461,
    "ingest": 9462,
    "analytics": 9463,
    "policy-engine": 9464,
    "table-writer": 9465,
    "forwarder-sync": 9466,
    "console": 9467,
}


def command() -> list[str]:
    """The container's command line: PID 1 is tini, its child the service."""
    with open("/proc/1/cmdline", "rb") as f:
        args = [a.decode() for a in f.read().split(b"\0") if a]
    return args[args.index("--") + 1 :] if "--" in args else args


def port() -> int:
    if os.environ.get("POPSHIFT_METRICS_PORT"):
        return int(os.environ["POPSHIFT_METRICS_PORT"])
    args = command()
    if len(args) >= 2 and args[0].endswith("popshift"):
        return DEFAULT_PORTS.get(args[1], 0)
    return 0


def main() -> int:
    p = port()
    if p == 0:
        return 0
    host = os.environ.get("POPSHIFT_METRICS_HOST", "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://{host}:{p}/metrics", timeout=3) as r:
            return 0 if r.status == 200 else 1
    except OSError as exc:
        print(f"metrics on {host}:{p}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
