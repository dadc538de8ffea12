"""The ``popshift`` command: one entry point for operators; subcommands grow with the services."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from popshift.settings import Settings


def _topics_create(args: argparse.Namespace, settings: Settings) -> int:
    from popshift.bus import create_topics
    from popshift.topics import ALL_TOPICS

    created = create_topics(settings.kafka_bootstrap, ALL_TOPICS, settings.topic_partitions)
    for t in ALL_TOPICS:
        print(f"{t.name:22} key={t.key:16} cleanup={t.cleanup_policy:8} dlq={t.dead_letter}")
    print(f"created {len(created)} topics ({', '.join(created) or 'all existed'})")
    return 0


def _schemas_generate(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.generate import write_all

    for path in write_all():
        print(path)
    return 0


def _settings_show(args: argparse.Namespace, settings: Settings) -> int:
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
    sub.add_parser("settings", help="print the effective settings").set_defaults(
        func=_settings_show
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args, Settings()))


if __name__ == "__main__":
    sys.exit(main())
