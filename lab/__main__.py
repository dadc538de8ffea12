"""The lab's command line (root): the namespace lab by hand, and the overload scenario.

    python -m lab up [--dataplane routing|xdp]     # (re)build the lab of namespaces
    python -m lab status [--json]
    python -m lab exec client-a -- python -m lab.app.loadgen whoami --target 10.200.1.1
    python -m lab redirect a --to b --share 0.5    # half of a's new connections -> b
    python -m lab down                             # also after a crash
    python -m lab demo --out /tmp/popshift-demo    # the scenario with every service, reported
    python -m lab cleanup --out /tmp/popshift-demo # after a hard kill of a scenario

The options before the subcommand (`--network`, `--servers`, ...) shape the hand-built lab;
the scenario builds its own (lab.settings).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lab.namespaces import DEFAULT_NETWORK, DEFAULT_STATE, REPO, DataPlane, Lab, load_state
from lab.topology import DEFAULT_PREFIX, build
from popshift.network import load_network
from popshift.settings import Settings

if TYPE_CHECKING:
    from lab.harness import Harness

SCENARIO_OUT = Path("/tmp/popshift-scenario")
# The XDP side (lab.dataplane, the scenario) is imported where it is used: it loads libbpf, and
# `up --dataplane routing` works on a machine without it.


def _print_status(status: dict[str, Any]) -> None:
    print(f"lab {status['prefix']}*  state={status['state'] or 'down'}")
    print(f"VIPs {status['vips']}  catchments {status['catchments']}  wires {status['wires_ms']}")
    for name, h in status["hosts"].items():
        extra = ""
        if h["up"]:
            extra = f"pids={h['pids']}" + "".join(
                f" xdp[{i}]={pid or '-'}" for i, pid in h["xdp"].items()
            )
        print(f"  {name:12} {h['role']:8} {'up' if h['up'] else 'DOWN':5} {extra}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab", description=__doc__.split("\n")[0])
    p.add_argument("--network", type=Path, default=DEFAULT_NETWORK)
    p.add_argument("--servers", type=int, default=2, help="compute servers per PoP")
    p.add_argument("--latency-scale", type=float, default=1.0)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--table-bits", type=int, default=Settings().table_bits,
                   help="log2 buckets per table (POPSHIFT_TABLE_BITS)")  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="(re)build the lab")
    up.add_argument("--dataplane", type=DataPlane, default=DataPlane.XDP,
                    choices=list(DataPlane))  # fmt: skip
    sub.add_parser("down", help="tear everything down (also after a crash)")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    rd = sub.add_parser("redirect", help="send a share of a PoP's new connections elsewhere")
    rd.add_argument("pop")
    rd.add_argument("--to", help="the PoP taking them; omit to make every bucket local again")
    rd.add_argument("--share", type=float, default=1.0)
    rd.add_argument("--tier", help="tier name (default: the first tier)")
    ex = sub.add_parser("exec", help="run a command in a lab host: exec HOST -- CMD...")
    ex.add_argument("host")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    for name, text in (("overload", "run it, save result.json"), ("demo", "run and report")):
        ov = sub.add_parser(name, help=f"scenario: overload a, cascade, cancel, drain: {text}")
        ov.add_argument("--out", type=Path, default=SCENARIO_OUT)
        ov.add_argument("--no-pin", action="store_true", help="skip the pinned-share sub-check")
        ov.add_argument("--overload-s", type=float, default=40.0, help="load on at least")
        ov.add_argument("--max-overload-s", type=float, default=120.0, help="... and at most")
    cl = sub.add_parser("cleanup", help="remove what a killed scenario left")
    cl.add_argument("--out", type=Path, default=SCENARIO_OUT)
    return p


def print_where_to_look(h: Harness) -> None:
    """The run's metrics endpoints, its traces, and `popshift status` on its topics."""
    import subprocess

    print("== where to look")
    print(f"  console  {h.services.console_url} (web: PoPs, policies, reasons, timeline)")
    for name, port in sorted(h.services.metrics_ports.items()):
        print(f"  metrics  {name:16} http://127.0.0.1:{port}/metrics")
    if os.environ.get("POPSHIFT_ZIPKIN_ENDPOINT"):
        print("  traces   http://127.0.0.1:9411/zipkin/ (service sync-a-edge, span 'bpf map "
              "write a-edge t0': one trace from a heartbeat to the map)")  # fmt: skip
    else:
        print("  traces   off: `make traces`, then POPSHIFT_ZIPKIN_ENDPOINT="
              "http://127.0.0.1:9411/api/v2/spans make demo")  # fmt: skip
    operator = h.services.env() | {"POPSHIFT_PRINCIPAL": "operator"}
    done = subprocess.run(
        [sys.executable, "-m", "popshift.cli", "status"], env=operator, cwd=REPO,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    print("  popshift status (on this run's topics):")
    for line in (done.stdout + done.stderr).splitlines():
        print(f"    {line}")


def run_scenario(args: argparse.Namespace) -> int:
    """One overload run; its Result is saved (even on failure), and reported for `demo`."""
    from lab.harness import Harness
    from lab.report import print_report
    from lab.scenario import overload

    def _term(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _term)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs" / "pids").unlink(missing_ok=True)
    path = args.out / "result.json"
    with Harness(args.out) as h:
        try:
            print(f"== console (live during the run): {h.services.console_url}", flush=True)
            overload(h, not args.no_pin, args.overload_s, args.max_overload_s)
            if args.cmd == "demo":
                print_where_to_look(h)
        finally:
            for name in list(h.traffic):  # keep what the load generators saw, even on failure
                h.stop_traffic(name, 5.0)
            h.result.save(path)
    print(f"result: {path}")
    if args.cmd == "demo":
        return 0 if all(c.ok for c in print_report(h.result, args.out)) else 1
    return 0


def run_lab(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The hand-built lab; every command but `up` acts on the lab as `up` built it."""
    if args.cmd != "up":
        saved = load_state(DEFAULT_STATE, args.prefix)
        args.network = Path(saved.get("network", args.network))
        args.servers = saved.get("servers", args.servers)
        args.latency_scale = saved.get("latency_scale", args.latency_scale)
        args.table_bits = saved.get("table_bits", args.table_bits)
    net = load_network(args.network)
    topo = build(net, args.servers, args.latency_scale, prefix=args.prefix,
                 table_bits=args.table_bits)  # fmt: skip
    lab = Lab(topo, net, getattr(args, "dataplane", DataPlane.XDP), network_file=args.network)
    if args.cmd == "up":
        lab.up()
        _print_status(lab.status())
    elif args.cmd == "down":
        lab.down()
    elif args.cmd == "redirect":
        from lab import dataplane

        tier = next(v.tier for v in topo.vips if args.tier in (None, v.tier_name))
        away = dataplane.redirect(topo, args.pop, tier, args.to, args.share)
        print(f"{args.pop} tier {tier}: {away} of {2**topo.table_bits} buckets away to {args.to}")
    elif args.cmd == "status":
        status = lab.status()
        print(json.dumps(status, indent=2)) if args.json else _print_status(status)
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            p.error("exec needs a command after --")
        os.chdir(REPO)
        os.execvp("ip", ["ip", "netns", "exec", topo.netns(args.host), *command])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("the lab needs root")
    if args.cmd == "cleanup":
        from lab.harness import cleanup

        cleanup(args.out)
        return 0
    if args.cmd in ("overload", "demo"):
        return run_scenario(args)
    return run_lab(p, args)


if __name__ == "__main__":
    sys.exit(main())
