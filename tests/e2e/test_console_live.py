"""End to end: the web console during a lab run, in a real browser, as an operator sees it.

The lab starts every service and the console (lab/supervisor.py) as real processes; PoP a is
overloaded. Debian's chromium (driven by Playwright) holds the console's page open the whole
time and must show what happened, pushed to it live: the three PoPs, a's status turning to
shed, the arrow a -> b with its share, and the engine's reason. A screenshot is kept in the
test's output folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.harness import Harness
from popshift.credentials import KafkaAccess, RedisAccess
from tests.e2e.conftest import require_lab

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.kafka, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/setup.sh installs it)
A_SHEDS = 'g.pop[data-pop="a"][data-status="shed"]'
A_TO_B = 'g.arrow[data-source="a"][data-destination="b"]'


@pytest.fixture(scope="module")
def seen(
    tmp_path_factory: pytest.TempPathFactory, kafka: KafkaAccess, redis_access: RedisAccess
) -> Iterator[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    require_lab()
    out: Path = tmp_path_factory.mktemp("console-live")
    got: dict[str, Any] = {"screenshot": out / "console-lab.png"}
    with Harness(out, log=lambda line: print(line, flush=True)) as h, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            for pop in h.topo.pops:
                rate, longs = h.plan.rates.get(pop.name, 0.0), h.plan.longs.get(pop.name, 0)
                h.start_traffic(f"region-{pop.name}", pop.name, rate, longs, "main")
            h.wait("a's table read", lambda: any(x.pop == "a" for x in h.result.tables), 30.0)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(h.services.console_url)
            page.wait_for_selector('g.pop[data-pop="a"][data-status]', timeout=60_000)
            page.wait_for_function(  # a's first verdict has arrived
                "document.querySelector('g.pop[data-pop=\"a\"]').dataset.status !== 'unknown'",
                timeout=60_000,
            )
            got["pops"] = page.locator("g.pop").evaluate_all("gs => gs.map(g => g.dataset.pop)")
            got["a_before"] = page.get_attribute('g.pop[data-pop="a"]', "data-status")
            h.set_load(True)
            page.wait_for_selector(A_SHEDS, timeout=90_000)
            page.wait_for_selector(A_TO_B, timeout=90_000)
            page.locator('#pops tr[data-pop="a"]').click()
            page.wait_for_selector("#detail pre.explain", timeout=15_000)
            got["arrow"] = page.locator(f"{A_TO_B} text").text_content()
            got["policy_row"] = page.inner_text(f"#policies tr{A_TO_B.removeprefix('g.arrow')}")
            got["timeline"] = page.inner_text("#timeline")
            got["detail"] = page.inner_text("#detail")
            got["link"] = page.inner_text("#link")
            page.screenshot(path=str(got["screenshot"]))
            got["errors"] = errors
        finally:
            browser.close()
            for name in list(h.traffic):
                h.stop_traffic(name, 5.0)
    print(f"screenshot: {got['screenshot']}")
    yield got


def test_the_console_shows_the_three_pops_live(seen: dict[str, Any]) -> None:
    assert sorted(seen["pops"]) == ["a", "b", "c"]
    assert seen["link"] == "live" and not seen["errors"], seen["errors"]


def test_a_turns_to_shed_on_the_page(seen: dict[str, Any]) -> None:
    assert seen["a_before"] in ("neutral", "can_take"), seen["a_before"]
    assert re.search(r"a: (neutral|can_take) -> shed at \d+%", seen["timeline"]), seen["timeline"]


def test_the_arrow_a_to_b_carries_its_share_and_the_engines_reason(seen: dict[str, Any]) -> None:
    share = re.fullmatch(r"a→b t0 (\d+)%", seen["arrow"] or "")
    assert share and 0 < int(share[1]) <= 100, seen["arrow"]
    assert f"t0 {share[1]}%" in seen["policy_row"], seen["policy_row"]
    assert "shed: a at" in seen["policy_row"], seen["policy_row"]  # as the engine wrote it
    assert "engine's reason: shed: a at" in seen["detail"], seen["detail"]
    assert seen["screenshot"].stat().st_size > 10_000
