"""The console on 300 PoPs: a simulator run recorded (`popshift simulate --console-record`)
and replayed (`popshift console --replay`), looked at in a real browser (Debian's chromium,
driven by Playwright) as an operator would: a world map with every PoP, London's half-server
failure turning it to shed and its policy drawn, the page still readable."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from popshift.console import Recording
from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)
SCENARIO = REPO / "scenarios" / "failure-300.yaml"
UNTIL_S = 1300.0  # London loses half its servers at 1200 s
MOST_LABELS = 40
"""Named PoPs on the 300-PoP map: those shedding and the one looked at, not all 300."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim-record")
    path = out / "console.jsonl"
    subprocess.run(
        [sys.executable, "-m", "popshift.cli", "simulate", "--scenario", str(SCENARIO),
         "--strategies", "popshift", "--duration-s", str(UNTIL_S), "--no-plots",
         "--out", str(out), "--console-record", str(path)],
        cwd=REPO, check=True, timeout=240, capture_output=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def replayed(recorded: Path) -> Iterator[str]:
    port = _free_port()
    env = os.environ | {"POPSHIFT_METRICS_PORT": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "popshift.cli", "console", "--replay", str(recorded),
         "--speed", "150", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 30.0
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < end and proc.poll() is None, "the console did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_recording_holds_the_network_with_places_and_the_controllers_messages(
    recorded: Path,
) -> None:
    rec = Recording(recorded)
    assert len(rec.network.pops) == 300
    assert all(p.lat is not None and p.lon is not None for p in rec.network.pops)
    kinds = {type(m).__name__ for _, m in rec.lines()}
    assert kinds == {"PopStatus", "PolicyEvent"}
    times = [t for t, _ in rec.lines()]
    assert times == sorted(times) and times[-1] <= UNTIL_S


def test_a_bad_line_of_a_recording_is_skipped(tmp_path: Path, recorded: Path) -> None:
    with recorded.open() as f:
        head, line = f.readline(), f.readline()
    path = tmp_path / "bad.jsonl"
    path.write_text(head + '{"t": 1, "topic": "nope.v1", "message": {}}\nnot json\n' + line)
    assert len(list(Recording(path).lines())) == 1
    path.write_text(json.dumps({"pops": []}) + "\n")
    with pytest.raises(ValueError, match="must hold the network"):
        Recording(path)


def test_300_pops_on_a_world_map_with_london_shedding_and_its_policy(
    replayed: str, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "console-300-pops.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(replayed)
            page.wait_for_selector("g.pop", timeout=20_000)
            assert page.locator("g.pop").count() == 300
            assert page.locator("path.land").count() == 1  # the world map, not a circle
            # the replay reaches London's failure: its status turns and its policy is drawn
            page.wait_for_selector('g.pop[data-pop="London"][data-status="shed"]', timeout=60_000)
            page.wait_for_selector('g.arrow[data-source="London"]', timeout=30_000)
            page.locator('#pops tr[data-pop="London"]').click()
            page.wait_for_selector("#detail pre.explain", timeout=10_000)
            detail = page.inner_text("#detail")
            timeline = page.inner_text("#timeline")
            labels = [t for t in page.locator("g.pop text").all_text_contents() if t.strip()]
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert not errors, errors
    assert "PoP London" in detail and "engine's reason" in detail, detail
    assert "London: can_take -> shed" in timeline or "London: neutral -> shed" in timeline
    assert 1 <= len(labels) <= MOST_LABELS, labels
