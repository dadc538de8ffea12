"""The ``popshift`` command: one entry point for operators; subcommands grow with the services."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from popshift.settings import Settings

# Subcommands that are whole programs of their own: name -> (module, function, help).
# Imported only when chosen, so `popshift settings` does not load faust or scipy.
DELEGATED: dict[str, tuple[str, str, str]] = {
    "policy": ("services.policy_engine.cli", "policy_main", "show and override inter-PoP policies"),
    "policy-engine": ("services.policy_engine.service", "main", "run the policy engine"),
    "table-writer": ("services.table_writer.service", "main", "run one PoP's table writer"),
    "agent": ("services.feedback_ingest.agent", "main", "run a compute-server agent"),
    "ingest": ("services.feedback_ingest.ingest", "main", "run the feedback ingest"),
    "analytics": ("services.analytics.app", "main", "run the analytics stream job"),
    "forwarder-sync": ("services.forwarder.sync", "main", "follow a PoP's tables into BPF maps"),
    "build-bpf": ("services.forwarder.build", "main", "compile the XDP programs"),
    "simulate": ("sim.cli", "simulate_main", "run a simulated network against the baselines"),
    "access": ("popshift.access", "access_main", "create the principals and their ACLs (admin)"),
    "status": ("popshift.status", "status_main", "PoPs, status, policies, tables, consumer lag"),
    "explain": ("popshift.status", "explain_main", "why a PoP's policy is what it is"),
    "console": ("popshift.console", "console_main", "the live web console (127.0.0.1:8088)"),
}


def _topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from popshift.bus import create_topics
    from popshift.topics import ALL_TOPICS

    mine = [settings.topic(t) for t in ALL_TOPICS]  # under POPSHIFT_TOPIC_PREFIX, if set
    created = create_topics(
        settings.kafka(),
        mine,
        settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        min_insync_replicas=settings.topic_min_insync_replicas,
    )
    for t in mine:
        print(f"{t.name:22} key={t.key:16} cleanup={t.cleanup_policy:8} dlq={t.dead_letter}")
    print(f"created {len(created)} topics ({', '.join(created) or 'all existed'})")
    return 0


def _schemas_generate(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.generate import write_all

    for path in write_all():
        print(path)
    return 0


def _settings_show(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        from popshift.settings import DOCUMENTED_SETTINGS, markdown_table

        print("\n\n".join(markdown_table(dotted) for dotted in DOCUMENTED_SETTINGS))
    else:
        print(json.dumps(settings.model_dump(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="popshift", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    topics = sub.add_parser("topics", help="Kafka topics").add_subparsers(
        dest="action", required=True
    )
    topics.add_parser(
        "create", help="create every topic and dead-letter topic (idempotent)"
    ).set_defaults(func=_topics_create)
    schemas = sub.add_parser("schemas", help="message schemas").add_subparsers(
        dest="action", required=True
    )
    schemas.add_parser("generate", help="write JSON Schema files into schemas/json").set_defaults(
        func=_schemas_generate
    )
    show = sub.add_parser("settings", help="print the effective shared settings")
    show.add_argument("--markdown", action="store_true", help="every service's settings tables")
    show.set_defaults(func=_settings_show)
    for name, (_module, _function, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here, run by main()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        # Hand everything after the name over untouched, `--help` included.
        module, function, _ = DELEGATED[argv[0]]
        return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
