"""``popshift policy show|pin|forbid|drain|clear``: see and override what the engine does.

Overrides set here live in Redis (``POPSHIFT_POLICY_OVERRIDES_KEY``) as one JSON document,
updated with optimistic locking (WATCH/MULTI), so two operators cannot lose each other's change.
The running engine reads them every round, merges them over the overrides file, and applies them
at once (no damping). ``show`` prints each source PoP's current policy from the compacted
policies topic, with its reason, and the overrides in force.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis

from popshift import redis_client, topics
from popshift.network import load_network
from popshift.replay import read_all
from schemas.messages import PolicyEvent
from services.policy_engine.overrides import (
    Forbid,
    InvalidOverride,
    Overrides,
    Pin,
    load_overrides,
)
from services.policy_engine.service import redis_overrides
from services.policy_engine.settings import PolicySettings


def _fraction(text: str) -> float:
    """``0.2`` or ``20%``."""
    value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a share is between 0 and 1 (or 0% and 100%)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popshift policy", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="current policies and overrides")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    pin = sub.add_parser("pin", help="fix the share of SRC's tier T traffic sent to DST")
    pin.add_argument("source")
    pin.add_argument("destination")
    pin.add_argument("share", type=_fraction, help="0.2 or 20%%; 0 = never this pair/tier")
    pin.add_argument("--tier", type=int, required=True)
    forbid = sub.add_parser("forbid", help="SRC never forwards to DST (any tier)")
    forbid.add_argument("source")
    forbid.add_argument("destination")
    drain = sub.add_parser("drain", help="POP takes nothing and hands off what it can")
    drain.add_argument("pop")
    clear = sub.add_parser("clear", help="remove the CLI overrides naming POP (all without POP)")
    clear.add_argument("pop", nargs="?")
    return parser


Edit = Callable[[Overrides], Overrides]


def _edit(args: argparse.Namespace) -> Edit:
    if args.action == "pin":
        new = Pin(
            source=args.source, destination=args.destination, tier=args.tier, share=args.share
        )
        return lambda o: o.merged(Overrides(pins=[new]))
    if args.action == "forbid":
        return lambda o: o.merged(
            Overrides(forbid=[Forbid(source=args.source, destination=args.destination)])
        )
    if args.action == "drain":
        return lambda o: o.merged(Overrides(drain=[args.pop]))
    pop = args.pop

    def clear(o: Overrides) -> Overrides:
        if pop is None:
            return Overrides()
        return Overrides(
            pins=[p for p in o.pins if pop not in (p.source, p.destination)],
            forbid=[f for f in o.forbid if pop not in (f.source, f.destination)],
            drain=[d for d in o.drain if d != pop],
        )

    return clear


def update_overrides(client: redis.Redis[bytes], key: str, edit: Edit) -> Overrides:
    """Read-modify-write the CLI overrides, retried if another writer got in between."""
    result: list[Overrides] = []

    def txn(pipe: Any) -> None:
        raw = pipe.get(key)
        current = Overrides.model_validate_json(raw) if raw else Overrides()
        updated = edit(current)
        pipe.multi()
        pipe.set(key, updated.model_dump_json())
        result.append(updated)

    client.transaction(txn, key)  # type: ignore[no-untyped-call]
    return result[-1]


def _describe(event: PolicyEvent) -> str:
    shares = ", ".join(f"t{s.tier}->{s.destination} {s.share:.1%}" for s in event.shares)
    util = ", ".join(f"{p} {u:.0%}" for p, u in event.reason.expected_utilisation.items())
    flag = " INFEASIBLE" if event.reason.infeasible else ""
    return (
        f"{event.source:12} v{event.version:<6} {event.action.value:6} {shares or '-'}{flag}\n"
        f"{'':12} why: {event.reason.rule}\n{'':12} expected: {util or '-'}"
    )


def policy_main(argv: Sequence[str] | None = None, settings: PolicySettings | None = None) -> int:
    """Entry point for ``popshift policy ...``; returns the exit code."""
    args = build_parser().parse_args(argv)
    settings = settings or PolicySettings()
    if settings.principal is None:  # an operator's command, not the engine (docs/security.md)
        settings = settings.model_copy(update={"principal": "operator"})
    network = load_network(settings.network_file)
    client: redis.Redis[bytes] = redis_client.connect(settings.redis())
    try:
        if args.action == "show":
            events = read_all(settings.kafka(), settings.topic(topics.POLICIES))
            latest: dict[str, PolicyEvent] = {}
            for ev in events:
                latest[ev.source] = ev
            from_file = load_overrides(settings.policy_overrides_file)
            from_cli = redis_overrides(client, settings.policy_overrides_key)
            if args.json:
                print(
                    json.dumps(
                        {
                            "policies": [e.model_dump(mode="json") for e in latest.values()],
                            "overrides": {
                                "file": from_file.model_dump(mode="json"),
                                "cli": from_cli.model_dump(mode="json"),
                            },
                        },
                        indent=2,
                    )
                )
                return 0
            active = [e for e in latest.values() if e.shares]
            print(f"{len(active)} PoP(s) forwarding ({len(latest)} with a policy)")
            for ev in sorted(latest.values(), key=lambda e: e.source):
                print(_describe(ev))
            print(f"overrides (file): {from_file.model_dump_json()}")
            print(f"overrides (cli):  {from_cli.model_dump_json()}")
            return 0
        edit = _edit(args)

        def checked(o: Overrides) -> Overrides:
            return edit(o).check(network)

        updated = update_overrides(client, settings.policy_overrides_key, checked)
        print(f"overrides (cli): {updated.model_dump_json()}")
        return 0
    except (InvalidOverride, ValueError) as exc:
        print(f"popshift policy: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(policy_main())
