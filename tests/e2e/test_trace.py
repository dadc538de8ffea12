"""End to end: one trace in Jaeger from an agent's heartbeat to a BPF map write.

Every service of a lab run exports its spans to the local Jaeger (deploy/observability); PoP a
is overloaded until its edge's maps send buckets away. Each service that aggregates sends its
result in a span that is the child of the newest of what it was made of (popshift/tracing.py),
so the trace of the edge sync's map write that carried a's policy holds the spans of all six
services: agent, ingest, analytics, policy engine, a's table writer, a's edge sync.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Harness
from popshift.credentials import KafkaAccess, RedisAccess
from tests.e2e.conftest import require_lab
from tests.observability.test_jaeger import (
    BUILD_TIMEOUT_S,
    OTLP_ENDPOINT,
    QUERY,
    _get_json,
    jaeger,  # noqa: F401 - the fixture, by name
)
from tests.observability.test_jaeger import pytestmark as jaeger_marks

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    *jaeger_marks,
    pytest.mark.timeout(BUILD_TIMEOUT_S + 600),
]

SIX = ("agent-", "ingest", "analytics", "policy-engine", "table-writer-a", "sync-a-edge")
CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)
OPERATION = "bpf map write a-edge t0"


def _whole(trace: dict[str, Any]) -> bool:
    services = {p["serviceName"] for p in trace["processes"].values()}
    return all(any(s.startswith(want) for s in services) for want in SIX)


def _map_write_traces() -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        {"service": "sync-a-edge", "operation": OPERATION, "lookback": "1h", "limit": 50}
    )
    return list(_get_json(f"{QUERY}/api/traces?{query}")["data"] or [])


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
    kafka: KafkaAccess,
    redis_access: RedisAccess,
    jaeger: str,  # noqa: F811
) -> Iterator[dict[str, Any]]:
    require_lab()
    out: Path = tmp_path_factory.mktemp("trace")
    env = {"POPSHIFT_OTLP_ENDPOINT": OTLP_ENDPOINT}
    found: dict[str, Any] = {}
    with Harness(out, log=lambda line: print(line, flush=True), extra_env=env) as h:
        try:
            for pop in h.topo.pops:
                rate, longs = h.plan.rates.get(pop.name, 0.0), h.plan.longs.get(pop.name, 0)
                h.start_traffic(f"region-{pop.name}", pop.name, rate, longs, "main")
            h.wait("a's table read", lambda: any(x.pop == "a" for x in h.result.tables), 30.0)
            h.set_load(True)
            h.wait("a's policy", lambda: bool(h.forwarding("a")), 90.0)
            h.wait("a's maps", lambda: h.maps_away("a") > 0, 30.0)
            deadline = time.monotonic() + 60.0  # spans leave each service every 5 s
            while time.monotonic() < deadline and not found:
                found = next((tr for tr in _map_write_traces() if _whole(tr)), {})
                h.sleep(2.0)
            if not found:
                traces = _map_write_traces()
                (out / "traces.json").write_text(json.dumps(traces))
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
    (out / "trace.json").write_text(json.dumps(found))
    found["_out"] = str(out)
    yield found


def test_one_trace_runs_from_a_heartbeat_to_the_bpf_map_write(traced: dict[str, Any]) -> None:
    assert traced, f"no trace of {OPERATION!r} holds the spans of {SIX}"
    names = {s["operationName"] for s in traced["spans"]}
    assert OPERATION in names
    for step in ("feedback.v1 send", "pop-load.v1 send", "policies.v1 send", "table write a t0"):
        assert any(n.endswith(step) for n in names), (step, sorted(names))
    # one tree: every span but the root is the child of another span of the trace
    ids = {s["spanID"] for s in traced["spans"]}
    roots = [
        s for s in traced["spans"]
        if not any(r["refType"] == "CHILD_OF" and r["spanID"] in ids for r in s["references"])
    ]  # fmt: skip
    assert len(roots) == 1 and roots[0]["operationName"].endswith("feedback.v1 send"), roots


def test_the_trace_ui_shows_all_six_services(traced: dict[str, Any]) -> None:
    """What a person sees: Jaeger's UI in a real browser (Debian's chromium, driven by
    Playwright) opened on that trace, each service named on it; a screenshot is kept."""
    from playwright.sync_api import sync_playwright

    assert traced, "no whole trace to show"
    shot = Path(traced["_out"]) / "jaeger-trace.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{QUERY}/trace/{traced['traceID']}", wait_until="networkidle")
            page.get_by_text(OPERATION).first.wait_for(timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    services = {p["serviceName"] for p in traced["processes"].values()}
    for service in services:
        assert service in text, (service, text[:2000])
    assert all(any(s.startswith(want) for s in services) for want in SIX)
