"""Prometheus metrics of a popshift process, served over HTTP on its configured address.

Why one module of names: every service counts the same things the same way (messages per
topic, the consumer's group and lag, the bus and Redis connection), and an operator's dashboards
and alerts are written against these names (README, "Metrics"). A service adds its own (solve
time, table-apply time, BPF verdicts) here too, so the list in README stays the whole list.

Serving never stops a service: a port in use is logged and the process goes on unobserved.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("popshift.metrics")

# --- the bus (popshift/bus.py) -----------------------------------------------------------------
CONSUMED = Counter("popshift_messages_consumed", "Kafka messages handled, per topic.", ["topic"])
DEAD_LETTERED = Counter(
    "popshift_messages_dead_lettered",
    "Kafka messages sent to the topic's dead-letter topic, per topic and reason.",
    ["topic", "reason"],
)
PRODUCED = Counter("popshift_messages_produced", "Kafka messages sent, per topic.", ["topic"])
PRODUCE_FAILED = Counter(
    "popshift_messages_produce_failed",
    "Kafka messages that failed for good (not acknowledged in time), per topic.",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "popshift_consumer_lag_messages",
    "Messages between a group consumer's position and the partition's end (librdkafka).",
    ["group", "topic", "partition"],
)
KAFKA_CONNECTED = Gauge(
    "popshift_kafka_connected", "1 while a broker is up for the group consumer.", ["group"]
)
GROUP_STEADY = Gauge(
    "popshift_consumer_group_steady",
    "1 while the consumer is settled in its group (join state steady).",
    ["group"],
)
REJOINED = Counter(
    "popshift_consumer_rejoined",
    "Times a consumer out of its group too long was replaced by a new client.",
    ["group"],
)

# --- the policy engine -------------------------------------------------------------------------
ROUND_SECONDS = Histogram(
    "popshift_engine_round_seconds",
    "One policy-engine round: demand estimate, solve, damping (the solve dominates).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
POLICY_EVENTS = Counter("popshift_policy_events", "Policy events emitted, per action.", ["action"])
LEASE_EXPIRIES = Counter(
    "popshift_lease_expiries",
    "Leases that ran out, per component: the engine's cancel of a silent source, a writer's "
    "policy back to local, a sync's table cut for want of renewal.",
    ["component"],
)

# --- the table writer --------------------------------------------------------------------------
TABLE_APPLY_SECONDS = Histogram(
    "popshift_table_apply_seconds",
    "Writing one new table version to Redis (the write and the switch of `current`).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REDIS_CONNECTED = Gauge(
    "popshift_redis_connected", "1 while the last Redis operation of this process succeeded."
)

# --- the forwarder's sync ----------------------------------------------------------------------
DATAPLANE_PACKETS = Gauge(
    "popshift_dataplane_packets",
    "The XDP program's verdict counters per tier as last read from its BPF map (a counter "
    "kept by the kernel: use rate()).",
    ["node", "tier", "verdict"],
)

# --- the console -------------------------------------------------------------------------------
CONSOLE_CLIENTS = Gauge("popshift_console_clients", "Browsers holding the console's event stream.")
CONSOLE_SKIPPED = Counter(
    "popshift_console_skipped",
    "Messages the console could not read (the owning service dead-lettered them), per topic.",
    ["topic"],
)


def serve(host: str, port: int | None, service: str) -> int | None:
    """Serve this process's metrics on ``host:port`` (``None`` or 0: not at all); the port
    serving, or None."""
    if not port:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("%s: metrics not served on %s:%d: %s", service, host, port, exc)
        return None
    log.info("%s: metrics on http://%s:%d/metrics", service, host, port)
    return port


def scrape(host: str, port: int, timeout_s: float = 5.0) -> dict[str, float]:
    """One scrape of a popshift endpoint: every sample as ``name{labels}`` -> value."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
