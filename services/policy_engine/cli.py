"""``popshift policy show|log|pin|forbid|drain|clear``: see, override and audit the engine.

Overrides set here live in Redis (``POPSHIFT_POLICY_OVERRIDES_KEY``) as one JSON document. The
running engine reads them every round, merges them over the overrides file, and applies them at
once (no damping). ``show`` prints each source PoP's current policy from the compacted policies
topic, with its reason, and the overrides in force; ``log`` prints the audit trail.

A change (pin, forbid, drain, clear; ``--reason`` required) goes: check it against the network
(services/policy_engine/overrides.py: unknown PoP or tier, a pin on a tier that may not move or
beyond its latency bound; refused: exit 2, Redis untouched) -> audit record ``requested``,
confirmed by Kafka (else exit 1, Redis untouched) -> compare-and-set in Redis (only if the
document is still the one the record describes; another operator's change in between is
recorded ``failed`` and the change is tried again from the new document) -> audit record
``applied`` or ``failed`` (services/policy_engine/audit.py says why this order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from popshift import redis_client, topics
from popshift.network import NetworkConfig, load_network
from popshift.replay import read_all
from schemas.messages import MAX_REASON_CHARS, AuditOutcome, PolicyAudit, PolicyEvent
from services.policy_engine.audit import (
    AuditTrail,
    AuditUnavailable,
    Operator,
    changes,
    clip,
    describe,
    kafka_trail,
    read_trail,
)
from services.policy_engine.overrides import (
    Forbid,
    InvalidOverride,
    Overrides,
    Pin,
    load_overrides,
)
from services.policy_engine.service import redis_overrides
from services.policy_engine.settings import PolicySettings

ATTEMPTS = 3
"""Compare-and-set rounds before a change that keeps losing to other operators gives up."""


def _fraction(text: str) -> float:
    """``0.2`` or ``20%``."""
    value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a share is between 0 and 1 (or 0% and 100%)")
    return value


def _text(text: str) -> str:
    """A ``--reason`` or ``--by``: not blank, and short enough for an audit record."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if len(text) > MAX_REASON_CHARS:
        raise argparse.ArgumentTypeError(f"at most {MAX_REASON_CHARS} characters")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popshift policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="current policies and overrides")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    log = sub.add_parser("log", help="the audit trail of pin/forbid/drain/clear, oldest first")
    log.add_argument("--pop", help="only records naming POP (and every clear --all)")
    log.add_argument("--limit", type=int, default=50, help="the last N records (default 50)")
    log.add_argument("--json", action="store_true", help="machine-readable output")
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
    clear = sub.add_parser("clear", help="remove the CLI overrides naming POP (all: --all)")
    clear.add_argument("pop", nargs="?")
    clear.add_argument("--all", action="store_true", help="remove every CLI override")
    for change in (pin, forbid, drain, clear):
        change.add_argument(
            "--reason", type=_text, required=True, help="why (kept in the audit trail)"
        )
        change.add_argument(
            "--by", type=_text, help="who asks, for the audit trail (default: the OS user)"
        )
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


ARGUMENTS = {
    "pin": ("source", "destination", "tier", "share"),
    "forbid": ("source", "destination"),
    "drain": ("pop",),
    "clear": ("pop", "all"),
}
"""What each change's audit records keep of its arguments."""


def _named(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The command's arguments and the PoPs it names (none: ``clear --all``, every PoP)."""
    arguments = {name: getattr(args, name) for name in ARGUMENTS[args.action]}
    pops = [arguments[k] for k in ("source", "destination", "pop") if arguments.get(k)]
    return arguments, pops


def compare_and_set(
    client: redis.Redis[bytes], key: str, expected: bytes | None, value: str
) -> bool:
    """Write ``value`` only if ``key`` still holds ``expected`` (None: absent); False if not.

    WATCH/MULTI: a write by someone else between the comparison and the SET makes Redis drop
    ours, and redis-py runs the comparison again.
    """

    def txn(pipe: Any) -> bool:
        if pipe.get(key) != expected:
            return False
        pipe.multi()
        pipe.set(key, value)
        return True

    done = client.transaction(txn, key, value_from_callable=True)  # type: ignore[no-untyped-call]
    return bool(done)


def change(
    args: argparse.Namespace,
    settings: PolicySettings,
    network: NetworkConfig,
    client: redis.Redis[bytes],
    trail: AuditTrail,
) -> int:
    """Check, audit, apply, audit (the module's docstring); returns the exit code."""
    arguments, pops = _named(args)
    operator = Operator.current(args.by)
    run = uuid.uuid4().hex
    key = settings.policy_overrides_key
    edit = _edit(args)

    def record(outcome: AuditOutcome, before: bytes | None, **fields: Any) -> PolicyAudit:
        return PolicyAudit(
            id=run,
            at=time.time(),
            outcome=outcome,
            action=args.action,
            arguments=arguments,
            pops=pops,
            reason=args.reason,
            by=operator.by,
            os_user=operator.os_user,
            host=operator.host,
            pid=operator.pid,
            before=None if before is None else before.decode(),
            **fields,
        )

    def outcome(entry: PolicyAudit) -> None:
        try:
            trail.write(entry)
        except AuditUnavailable as exc:
            _err(f"warning: the {entry.outcome.value} record of {run} was not written: {exc}")

    for _attempt in range(ATTEMPTS):
        raw = client.get(key)
        before = Overrides.model_validate_json(raw) if raw else Overrides()
        try:
            after = edit(before).check(network)
        except (InvalidOverride, ValueError) as exc:
            outcome(record(AuditOutcome.REFUSED, raw, error=clip(str(exc))))
            _err(f"refused, nothing changed: {exc}")
            return 2
        text = after.model_dump_json()
        diff = changes(before, after)
        # Raises AuditUnavailable: then nothing is written to Redis.
        trail.write(record(AuditOutcome.REQUESTED, raw, after=text, changes=diff))
        try:
            written = compare_and_set(client, key, raw, text)
        except redis.RedisError as exc:
            outcome(record(AuditOutcome.FAILED, raw, after=text, error=clip(f"Redis: {exc}")))
            _err(f"failed: Redis: {exc}")
            return 1
        if written:
            outcome(record(AuditOutcome.APPLIED, raw, after=text, changes=diff))
            print(f"overrides (cli): {text}")
            return 0
        busy = "another change got in first; tried again from it"
        outcome(record(AuditOutcome.FAILED, raw, after=text, error=busy))
    _err(f"failed: the overrides kept changing under us ({ATTEMPTS} attempts); nothing changed")
    return 1


def _err(text: str) -> None:
    print(f"popshift policy: {text}", file=sys.stderr)


def _describe(event: PolicyEvent) -> str:
    shares = ", ".join(f"t{s.tier}->{s.destination} {s.share:.1%}" for s in event.shares)
    util = ", ".join(f"{p} {u:.0%}" for p, u in event.reason.expected_utilisation.items())
    flag = " INFEASIBLE" if event.reason.infeasible else ""
    return (
        f"{event.source:12} v{event.version:<6} {event.action.value:6} {shares or '-'}{flag}\n"
        f"{'':12} why: {event.reason.rule}\n{'':12} expected: {util or '-'}"
    )


def _show(args: argparse.Namespace, settings: PolicySettings, client: redis.Redis[bytes]) -> int:
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


def _log(args: argparse.Namespace, settings: PolicySettings) -> int:
    records = read_trail(settings, args.pop)
    shown = records[-args.limit :] if args.limit > 0 else []
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in shown], indent=2))
    else:
        for r in shown:
            print(describe(r))
        print(f"{len(shown)} of {len(records)} record(s)")
    return 0


def policy_main(argv: Sequence[str] | None = None, settings: PolicySettings | None = None) -> int:
    """Entry point for ``popshift policy ...``; returns the exit code: 0 done, 1 not done
    (audit trail, Redis or Kafka unavailable), 2 refused (bad arguments or against the rules)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "clear" and (args.pop is None) == (not args.all):
        parser.error("clear: name a PoP or give --all (not both)")
    settings = settings or PolicySettings()
    if settings.principal is None:  # an operator's command, not the engine (docs/security.md)
        settings = settings.model_copy(update={"principal": "operator"})
    if args.action == "log":
        return _log(args, settings)
    network = load_network(settings.network_file)
    client: redis.Redis[bytes] = redis_client.connect(settings.redis())
    try:
        if args.action == "show":
            return _show(args, settings, client)
        return change(args, settings, network, client, kafka_trail(settings))
    except AuditUnavailable as exc:
        _err(f"the audit trail is unavailable, nothing changed: {exc}")
        return 1
    except redis.RedisError as exc:
        _err(f"Redis at {settings.redis_url}: {exc}")
        return 1
    except (InvalidOverride, ValueError) as exc:
        _err(str(exc))
        return 2
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(policy_main())
