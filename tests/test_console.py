"""The console's server (popshift/console.py) against the real Kafka: it reads the topics'
recent past, pushes a snapshot on its event stream as soon as a message changes the view, counts
what it cannot read, and serves the built page with nothing from outside."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from popshift import topics as t
from popshift.bus import TypedProducer, create_topics
from popshift.console import FOLLOWED, STATIC, Board, ConsoleSettings, follow_kafka, serve
from popshift.credentials import KafkaAccess
from popshift.network import load_network
from schemas.messages import PolicyAction, PolicyEvent, PolicyReason, PopState, PopStatus, Share

pytestmark = pytest.mark.kafka

Snapshot = dict[str, Any]


def _status(pop: str, state: PopState, util: float) -> PopStatus:
    now = time.time()
    return PopStatus(
        pop=pop, at=now, state=state, since=now, utilisation=util, capacity_cores=4.0,
        load_cores=4.0 * util, rule="combined_over: 0.97 > 0.85",
    )  # fmt: skip


def _events(url: str) -> Generator[Snapshot, None, None]:
    """The snapshots of one server-sent-events stream, as a browser's EventSource gets them."""
    with urllib.request.urlopen(url, timeout=30) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "snapshot":
                yield json.loads(line.removeprefix("data: "))


def _until(stream: Iterator[Snapshot], ok: Callable[[Snapshot], bool], within_s: float) -> Snapshot:
    end = time.monotonic() + within_s
    for snap in stream:
        if ok(snap):
            return snap
        assert time.monotonic() < end, f"not seen within {within_s} s; last: {snap}"
    raise AssertionError("the stream ended")


@pytest.fixture
def console(kafka: KafkaAccess, unique: str) -> Iterator[tuple[str, ConsoleSettings]]:
    settings = ConsoleSettings(
        topic_prefix=unique, principal="admin", console_port=0, console_refresh_s=0.5
    )
    create_topics(kafka, [settings.topic(x) for x in FOLLOWED], partitions=1)
    # a's first verdict is in the topic before the console starts: read from the recent past
    producer = TypedProducer(kafka)
    producer.send(settings.topic(t.POP_STATUS), "a", _status("a", PopState.NEUTRAL, 0.5))
    producer.flush()
    board = Board(load_network(settings.network_file), 10.0, time.time)
    stop = threading.Event()
    follower = threading.Thread(
        target=follow_kafka, args=(board, settings, 600.0, stop), daemon=True
    )
    follower.start()
    server = serve(board, settings)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", settings
    finally:
        stop.set()
        server.stopping.set()
        server.shutdown()
        server.server_close()
        follower.join(10.0)


def test_each_change_reaches_the_page_on_its_event_stream(
    console: tuple[str, ConsoleSettings], kafka: KafkaAccess
) -> None:
    url, settings = console
    stream = _events(f"{url}/events?focus=a")
    try:
        _follow(stream, settings, kafka)
    finally:
        stream.close()


def _follow(stream: Iterator[Snapshot], settings: ConsoleSettings, kafka: KafkaAccess) -> None:
    first = _until(stream, lambda s: s["pops"][0]["status"] == "neutral", 30.0)
    assert [p["name"] for p in first["pops"]] == ["a", "b", "c"]
    assert first["arrows"] == [] and first["connected"]

    producer = TypedProducer(kafka)
    producer.send(settings.topic(t.POP_STATUS), "a", _status("a", PopState.SHED, 0.97))
    producer.send_raw(settings.topic(t.POP_STATUS).name, "a", b'{"pop": "a"}', [])  # invalid
    now = time.time()
    producer.send(settings.topic(t.POLICIES), "a", PolicyEvent(
        action=PolicyAction.NEW, source="a", version=1, epoch=1, issued_at=now,
        expires_at=now + 15.0, shares=[Share(tier=0, destination="b", share=0.4)],
        reason=PolicyReason(trigger_pop="a", rule="shed: a at 0.97 > target 0.75"),
    ))  # fmt: skip
    producer.flush()
    sent = time.monotonic()
    snap = _until(stream, lambda s: bool(s["arrows"]), 15.0)
    pushed_s = time.monotonic() - sent
    print(f"policy on the page {pushed_s:.2f} s after it was sent")

    assert [(a["source"], a["destination"], a["label"]) for a in snap["arrows"]] == [
        ("a", "b", "t0 40%")
    ]
    assert snap["arrows"][0]["reason"] == "shed: a at 0.97 > target 0.75"
    assert snap["pops"][0]["status"] == "shed"
    assert snap["invalid"] == 1
    assert [c["text"] for c in snap["timeline"]] == [
        "a v1 new: t0->b 40%",
        "a: neutral -> shed at 97%",
    ]
    assert snap["focus"]["pop"] == "a"
    assert any("receives" in line or "policy v1" in line for line in snap["focus"]["explain"])


def test_the_page_is_served_from_the_built_files_with_nothing_from_outside(
    console: tuple[str, ConsoleSettings],
) -> None:
    url, _ = console
    with urllib.request.urlopen(f"{url}/", timeout=10) as page:
        html = page.read().decode()
    assert '<svg id="map"' in html
    local = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert local and all(ref.startswith(("/", "data:")) for ref in local), local
    with urllib.request.urlopen(f"{url}/console.js", timeout=10) as script:
        assert script.headers["Content-Type"] == "text/javascript"
        assert len(script.read()) == (STATIC / "console.js").stat().st_size
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/../popshift/console.py", timeout=10)
    assert missing.value.code == 404
    missing.value.close()
