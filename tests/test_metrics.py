"""The Prometheus endpoint every service serves (popshift/metrics.py): served where configured,
never fatal when it cannot be, and what a scrape reads back."""

from __future__ import annotations

import socket

from popshift import metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_served_endpoint_answers_a_scrape_with_popshift_names() -> None:
    port = _free_port()
    assert metrics.serve("127.0.0.1", port, "test") == port
    metrics.PRODUCED.labels("scrape-test.v1").inc(3)
    got = metrics.scrape("127.0.0.1", port)
    assert got['popshift_messages_produced_total{topic="scrape-test.v1"}'] >= 3.0
    for name in ("popshift_engine_round_seconds_count", "popshift_redis_connected"):
        assert name in got


def test_a_port_in_use_or_none_is_not_fatal() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert metrics.serve("127.0.0.1", taken.getsockname()[1], "test") is None
    assert metrics.serve("127.0.0.1", None, "test") is None
    assert metrics.serve("127.0.0.1", 0, "test") is None
