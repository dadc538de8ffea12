"""End to end: one trace from an agent's heartbeat to a BPF map write, seen in a trace UI.

Every service of a lab run exports its spans to the local Zipkin (deploy/observability: its
server jar carries its UI); PoP a is overloaded until its edge's maps send buckets away. Each
service that aggregates sends its result in a span that is the child of the newest of what it
was made of (popshift/tracing.py), so the trace of the edge sync's map write that carried a's
policy holds the spans of all six services: agent, ingest, analytics, policy engine, a's table
writer, a's edge sync. Then a real browser (Debian's chromium, driven by Playwright) opens that
trace in Zipkin's UI.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Harness
from popshift.credentials import KafkaAccess, RedisAccess
from tests.conftest import REPO
from tests.e2e.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]

OBS = REPO / "deploy" / "observability"
ZIPKIN = "http://127.0.0.1:9411"
SIX = ("agent-", "ingest", "analytics", "policy-engine", "table-writer-a", "sync-a-edge")
OPERATION = "bpf map write a-edge t0"
STEPS = (
    "feedback.v1 send", "pop-load.v1 send", "pop-status.v1 process", "policies.v1 send",
    "policies.v1 process", "table write a t0", "table-updates.v1 process", OPERATION,
)  # fmt: skip
"""The spans the trace must hold, in order: a table written for a pop-load (its server list)
also reaches the map from a heartbeat, but not through a policy."""
CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def _services(trace: list[dict[str, Any]]) -> set[str]:
    return {s.get("localEndpoint", {}).get("serviceName", "") for s in trace}


def _whole(trace: list[dict[str, Any]]) -> bool:
    """Zipkin keeps names in lower case, as ours are."""
    names = {s.get("name", "") for s in trace}
    return all(any(s.startswith(w) for s in _services(trace)) for w in SIX) and all(
        any(n.endswith(step) for n in names) for step in STEPS
    )


def _map_write_traces() -> list[list[dict[str, Any]]]:
    query = urllib.parse.urlencode(
        {"serviceName": "sync-a-edge", "spanName": OPERATION, "lookback": 3_600_000, "limit": 50}
    )
    return list(_get_json(f"{ZIPKIN}/api/v2/traces?{query}"))


@pytest.fixture(scope="module")
def zipkin() -> Iterator[str]:
    subprocess.run(["bash", str(OBS / "zipkin-start.sh")], check=True, timeout=600)
    yield ZIPKIN
    subprocess.run(["bash", str(OBS / "zipkin-stop.sh")], check=True, timeout=60)


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
    kafka: KafkaAccess,
    redis_access: RedisAccess,
    zipkin: str,
) -> Iterator[tuple[list[dict[str, Any]], Path]]:
    require_lab()
    out: Path = tmp_path_factory.mktemp("trace")
    env = {"POPSHIFT_ZIPKIN_ENDPOINT": f"{zipkin}/api/v2/spans"}
    found: list[dict[str, Any]] = []
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
                found = next((tr for tr in _map_write_traces() if _whole(tr)), [])
                h.sleep(2.0)
            if not found:
                (out / "traces.json").write_text(json.dumps(_map_write_traces()))
        finally:
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
    (out / "trace.json").write_text(json.dumps(found))
    yield found, out


def test_one_trace_runs_from_a_heartbeat_to_the_bpf_map_write(
    traced: tuple[list[dict[str, Any]], Path],
) -> None:
    trace, _ = traced
    assert trace, f"no trace of {OPERATION!r} holds the spans {STEPS} of {SIX}"
    # one tree: every span but the root is the child of another span of the trace
    ids = {s["id"] for s in trace}
    roots = [s for s in trace if s.get("parentId") not in ids]
    assert len(roots) == 1 and roots[0]["name"].endswith("feedback.v1 send"), roots
    assert roots[0]["localEndpoint"]["serviceName"].startswith("agent-")


def test_the_trace_ui_shows_all_six_services(traced: tuple[list[dict[str, Any]], Path]) -> None:
    """What a person sees: Zipkin's UI in a real browser opened on that trace, each service
    named on it; a screenshot is kept in the run's output folder."""
    from playwright.sync_api import sync_playwright

    trace, out = traced
    assert trace, "no whole trace to show"
    shot = out / "zipkin-trace.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(f"{ZIPKIN}/zipkin/traces/{trace[0]['traceId']}", wait_until="networkidle")
            page.get_by_text(OPERATION, exact=False).first.wait_for(timeout=30_000)
            text = page.inner_text("body").lower()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    for service in _services(trace):
        assert service in text, (service, text[:2000])
