"""``popshift status`` and ``popshift explain POP``: the operator's view, read from Kafka.

Thin adapter: reads the topics every service writes (the latest pop-status of each PoP,
policies.v1 whole, recent table-updates.v1) and the consumer groups' committed offsets, builds a
:class:`popshift.view.NetworkView` and prints it. Runs as the ``operator`` principal, which may
read those topics and describe the service groups (popshift/access.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from popshift import topics
from popshift.network import load_network
from popshift.replay import read_all
from popshift.settings import Settings
from popshift.view import NetworkView, explain_lines, status_lines

log = logging.getLogger("popshift.status")

ADMIN_TIMEOUT_S = 15.0
"""Generous on purpose: librdkafka 2.16 can abort the process when an admin request times out."""


STATUS_WINDOW_S = 30.0  # the latest pop-status of each PoP is among this many seconds' worth
TABLES_WINDOW_S = 3600.0  # ... its latest table-update among these (renewed by every write)


def operator_settings() -> Settings:
    """The shared settings, as the ``operator`` principal unless POPSHIFT_PRINCIPAL says."""
    settings = Settings()
    if settings.principal is None:
        settings = settings.model_copy(update={"principal": "operator"})
    return settings


def service_groups(settings: Settings, pops: Sequence[str]) -> list[str]:
    """The consumer groups whose lag an operator watches (sync groups are found by prefix)."""
    from services.analytics.app import AnalyticsSettings
    from services.feedback_ingest.settings import IngestSettings
    from services.table_writer.settings import TableWriterSettings

    writer = TableWriterSettings()
    return [
        IngestSettings().ingest_group,
        AnalyticsSettings().analytics_app_id,
        *(f"{writer.table_group_prefix}-{p}" for p in pops),
    ]


def group_lag(settings: Settings, groups: Sequence[str]) -> dict[str, int | None]:
    """Messages each group has yet to commit, summed over its partitions (None: unreadable)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    from services.forwarder.sync_settings import SyncSettings

    config = settings.kafka().config()
    admin = AdminClient(config)
    wanted = list(groups)
    try:
        listed = admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S).result(
            timeout=ADMIN_TIMEOUT_S
        )
        prefix = SyncSettings().sync_group_prefix
        wanted += sorted(g.group_id for g in listed.valid if g.group_id.startswith(prefix))
    except KafkaException as exc:
        log.warning("cannot list consumer groups: %s", exc)
    reader = Consumer({**config, "group.id": "popshift-status", "enable.auto.commit": False})
    out: dict[str, int | None] = {}
    try:
        for group in wanted:
            try:
                futures = admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(group)], request_timeout=ADMIN_TIMEOUT_S
                )
                committed = futures[group].result(timeout=ADMIN_TIMEOUT_S).topic_partitions
            except KafkaException as exc:
                log.debug("group %s: %s", group, exc)
                out[group] = None
                continue
            lag = 0
            for tp in committed or []:
                _, high = reader.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=ADMIN_TIMEOUT_S
                )
                lag += max(0, high - max(tp.offset, 0))
            out[group] = lag if committed else None
    finally:
        reader.close()
    return out


def read_view(settings: Settings, pops: Sequence[str], with_lag: bool = True) -> NetworkView:
    kafka = settings.kafka()
    view = NetworkView()
    view.observe(read_all(kafka, settings.topic(topics.POLICIES)))
    view.observe(read_all(kafka, settings.topic(topics.POP_STATUS), since_s=STATUS_WINDOW_S))
    view.observe(read_all(kafka, settings.topic(topics.TABLE_UPDATES), since_s=TABLES_WINDOW_S))
    if with_lag:
        view.lag = group_lag(settings, service_groups(settings, pops))
    return view


def _max_age() -> float:
    from services.policy_engine.settings import PolicySettings

    return PolicySettings().policy_status_max_age_s


def status_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="popshift status", description="PoPs, their status, policies, tables and lag"
    )
    parser.add_argument("--no-lag", action="store_true", help="skip the consumer groups' lag")
    args = parser.parse_args(list(argv or []))
    settings = operator_settings()
    network = load_network(settings.network_file)
    view = read_view(settings, network.pop_names, with_lag=not args.no_lag)
    print("\n".join(status_lines(view, network, time.time(), _max_age())))
    return 0


def explain_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="popshift explain", description="why a PoP's policy is what it is"
    )
    parser.add_argument("pop")
    args = parser.parse_args(list(argv or []))
    settings = operator_settings()
    network = load_network(settings.network_file)
    if args.pop not in network.pop_names:
        print(f"unknown PoP {args.pop!r}: one of {', '.join(network.pop_names)}", file=sys.stderr)
        return 2
    view = read_view(settings, network.pop_names, with_lag=False)
    print("\n".join(explain_lines(view, network, args.pop, time.time(), _max_age())))
    return 0
