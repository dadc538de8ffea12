"""``popshift console``: the operator's live web console (127.0.0.1:8088 by default).

Thin adapter around the pure :mod:`popshift.console_model`. A follower thread reads the topics
every service writes (pop-status, policies, table-updates, pop-load, dataplane-stats) from
``console_history_s`` ago on, joining no consumer group, into one
:class:`popshift.view.NetworkView`; every browser holds one server-sent-events stream
(``/events``) on which a snapshot is pushed as soon as the view changes (at most every
``console_push_interval_s``, and every ``console_refresh_s`` anyway so ages and leases move).
The page is static files built once from npm libraries (web/console, ``make setup``).

With ``--replay FILE`` the same page plays a recording of ``popshift simulate
--console-record`` (300 PoPs on a world map) instead of Kafka, on the recording's clock.

Runs as the ``operator`` principal, which may read those topics (popshift/access.py). Losing
Kafka keeps the last view on the page (its statuses turn stale as they age) until it is back.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TextIO

from pydantic import Field

from popshift import metrics, topics
from popshift.network import NetworkConfig, load_network
from popshift.settings import Settings
from popshift.view import NetworkView, Observed

log = logging.getLogger("popshift.console")

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "web" / "console" / "dist"
FOLLOWED = (
    topics.POP_STATUS,
    topics.POLICIES,
    topics.TABLE_UPDATES,
    topics.POP_LOAD,
    topics.DATAPLANE_STATS,
)


class ConsoleSettings(Settings):
    """console: pop-status, policies, table-updates, pop-load, dataplane-stats in; a web page."""

    default_principal: ClassVar[str] = "operator"
    default_metrics_port: ClassVar[int] = 9467

    console_host: str = Field("127.0.0.1", description="Address the console listens on.")
    console_port: int = Field(8088, ge=0, lt=65536, description="Its HTTP port (0: any free).")
    console_history_s: float = Field(
        600.0,
        gt=0.0,
        description="How far back the topics are read at start (the timeline's first changes; "
        "policies older than this have lapsed).",
    )
    console_push_interval_s: float = Field(
        0.25, gt=0.0, le=10.0, description="Least time between two snapshots to one browser."
    )
    console_refresh_s: float = Field(
        1.0, gt=0.0, le=60.0, description="A snapshot at least this often (ages, leases)."
    )


class Board:
    """The view every browser is shown, and a version that moves on every change."""

    def __init__(self, network: NetworkConfig, max_age_s: float, clock: Callable[[], float]):
        self.network = network
        self.max_age_s = max_age_s
        self.clock = clock
        self.view = NetworkView()
        self.version = 0
        self.invalid = 0
        self.source = "kafka"
        self.connected = False
        self._changed = threading.Condition()

    def observe(self, messages: Sequence[Observed]) -> None:
        with self._changed:
            self.view.observe(messages)
            self.version += 1
            self._changed.notify_all()

    def rejected(self, topic: str, why: str) -> None:
        """A message the page cannot show: counted (the services already dead-lettered it)."""
        metrics.CONSOLE_SKIPPED.labels(topic).inc()
        with self._changed:
            self.invalid += 1
        if self.invalid <= 10 or self.invalid % 1000 == 0:
            log.warning("skipping an invalid message of %s (%d so far): %s", topic, self.invalid,
                        why)  # fmt: skip

    def wait(self, seen: int, timeout_s: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self.version != seen, timeout=timeout_s)
            return self.version

    def snapshot(self, focus: str | None) -> dict[str, Any]:
        from popshift.console_model import snapshot

        with self._changed:
            out = snapshot(self.view, self.network, self.clock(), self.max_age_s, focus)
            out["invalid"] = self.invalid
        out["source"] = self.source
        out["connected"] = self.connected
        return out


# --- where the view comes from ------------------------------------------------------------------


def follow_kafka(board: Board, settings: Settings, history_s: float, stop: threading.Event) -> None:
    """Every partition of the followed topics from ``history_s`` ago on, for as long as the
    console runs; the client reconnects by itself, the board keeps what it has meanwhile."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from popshift.bus import DEFAULT_MAX_MESSAGE_BYTES, RejectMessage, validate

    wanted = {settings.topic(t).name: t for t in FOLLOWED}
    consumer = Consumer(
        {
            **settings.kafka().config(),
            "group.id": "popshift-console",  # never joined: partitions are assigned by hand
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    try:
        while not stop.is_set():  # until the topics exist and their offsets can be found
            try:
                since_ms = int((time.time() - history_s) * 1000)
                parts = []
                for name in wanted:
                    meta = consumer.list_topics(name, timeout=5.0).topics[name]
                    if meta.error is not None:
                        raise KafkaException(meta.error)
                    parts += [TopicPartition(name, p, since_ms) for p in sorted(meta.partitions)]
                consumer.assign(consumer.offsets_for_times(parts, timeout=10.0))
                break
            except KafkaException as exc:
                log.warning("cannot read the topics yet (%s); trying again", exc)
                board.connected = False
                stop.wait(2.0)
        while not stop.is_set():
            batch: list[Observed] = []
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is not None:
                    board.connected = False
                    log.debug("kafka: %s", msg.error())
                    continue
                name = str(msg.topic())
                metrics.CONSUMED.labels(name).inc()
                try:
                    raw = msg.value() or b""
                    batch.append(validate(wanted[name], raw, DEFAULT_MAX_MESSAGE_BYTES))
                except RejectMessage as exc:
                    board.rejected(name, str(exc))
            if batch:
                board.connected = True
                board.observe(batch)
    finally:
        consumer.close()


class Recording:
    """A simulator run's statuses and policies on its own clock (``--console-record``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open() as f:
            first = json.loads(f.readline())
        if "network" not in first:
            raise ValueError(f"{path}: the first line must hold the network")
        self.network = NetworkConfig.model_validate(first["network"])
        self.status_max_age_s: float | None = first.get("status_max_age_s")

    def lines(self) -> Iterator[tuple[float, Observed]]:
        with self.path.open() as f:
            f.readline()
            for n, line in enumerate(f, start=2):
                try:
                    row = json.loads(line)
                    yield (
                        float(row["t"]),
                        topics.by_name(row["topic"]).adapter.validate_python(row["message"]),
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("%s line %d skipped: %s", self.path, n, str(exc)[:200])


class ReplayClock:
    """The recording's time, running ``speed`` times faster than the wall from its first line
    and holding at its last."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start_t: float | None = None
        self.start_wall = 0.0
        self.end_t: float | None = None

    def __call__(self) -> float:
        if self.start_t is None:
            return 0.0
        now = self.start_t + (time.monotonic() - self.start_wall) * self.speed
        return now if self.end_t is None else min(now, self.end_t)


def replay(board: Board, recording: Recording, clock: ReplayClock, stop: threading.Event) -> None:
    batch: list[Observed] = []
    for t, message in recording.lines():
        if clock.start_t is None:
            clock.start_t, clock.start_wall = t, time.monotonic()
        ahead = (t - clock.start_t) / clock.speed - (time.monotonic() - clock.start_wall)
        if ahead > 0.0:
            if batch:
                board.observe(batch)
                batch = []
            if stop.wait(ahead):
                return
        batch.append(message)
    board.observe(batch)
    clock.end_t = clock()  # the last state stays on the page
    log.info("replay of %s done", recording.path)


# --- the web server ------------------------------------------------------------------------------


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], board: Board, settings: ConsoleSettings):
        super().__init__(address, ConsoleHandler)
        self.board = board
        self.settings = settings
        self.stopping = threading.Event()


class ConsoleHandler(BaseHTTPRequestHandler):
    server: ConsoleServer
    protocol_version = "HTTP/1.1"
    PAGES: ClassVar[dict[str, str]] = {"/": "index.html"}

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        focus = urllib.parse.parse_qs(url.query).get("focus", [None])[0]
        if url.path == "/events":
            self._events(focus)
        elif url.path == "/api/snapshot":
            self._send(HTTPStatus.OK, "application/json", self._json(focus))
        elif url.path == "/healthz":
            self._send(HTTPStatus.OK, "text/plain", b"ok\n")
        else:
            self._static(self.PAGES.get(url.path, url.path.lstrip("/")))

    def _json(self, focus: str | None) -> bytes:
        return json.dumps(self.server.board.snapshot(focus), separators=(",", ":")).encode()

    def _send(self, status: HTTPStatus, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if not path.is_relative_to(STATIC.resolve()) or not path.is_file():
            missing = not (STATIC / "index.html").is_file()
            why = b"the console's files are not built: run `make setup`\n" if missing else b""
            self._send(HTTPStatus.NOT_FOUND, "text/plain", why or b"not found\n")
            return
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(HTTPStatus.OK, kind, path.read_bytes())

    def _events(self, focus: str | None) -> None:
        """A snapshot now, then one after every change (no sooner than the push interval)."""
        settings, board = self.server.settings, self.server.board
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seen = -1
        metrics.CONSOLE_CLIENTS.inc()
        try:
            while not self.server.stopping.is_set():
                sent_at = time.monotonic()
                seen = board.version
                self.wfile.write(b"event: snapshot\ndata: " + self._json(focus) + b"\n\n")
                self.wfile.flush()
                rest = settings.console_push_interval_s - (time.monotonic() - sent_at)
                if rest > 0 and self.server.stopping.wait(rest):
                    break
                board.wait(seen, settings.console_refresh_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        finally:
            metrics.CONSOLE_CLIENTS.dec()


def serve(board: Board, settings: ConsoleSettings) -> ConsoleServer:
    """The web server on its own thread; ``shutdown()`` it to stop."""
    server = ConsoleServer((settings.console_host, settings.console_port), board, settings)
    threading.Thread(target=server.serve_forever, name="console-http", daemon=True).start()
    return server


def _max_age() -> float:
    from services.policy_engine.settings import PolicySettings

    return PolicySettings().policy_status_max_age_s


def console_main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    from popshift.process import install_stop_signals, setup_logging

    parser = argparse.ArgumentParser(prog="popshift console", description=__doc__.split("\n")[0])
    parser.add_argument("--replay", type=Path, help="a `popshift simulate --console-record` file")
    parser.add_argument("--speed", type=float, default=60.0, help="replay: simulated s per s")
    parser.add_argument("--port", type=int, help="overrides POPSHIFT_CONSOLE_PORT")
    args = parser.parse_args(list(argv or []))
    setup_logging()
    settings = ConsoleSettings()
    if args.port is not None:
        settings = settings.model_copy(update={"console_port": args.port})
    settings.start_telemetry()
    stop = threading.Event()
    if args.replay is not None:
        recording = Recording(args.replay)
        clock = ReplayClock(args.speed)
        board = Board(recording.network, recording.status_max_age_s or _max_age(), clock)
        board.source = f"replay of {args.replay.name} at {args.speed:g}x"
        board.connected = True
        worker = threading.Thread(target=replay, args=(board, recording, clock, stop), daemon=True)
    else:
        board = Board(load_network(settings.network_file), _max_age(), time.time)
        worker = threading.Thread(
            target=follow_kafka,
            args=(board, settings, settings.console_history_s, stop),
            name="console-follow",
            daemon=True,
        )
    server = serve(board, settings)
    host, port = server.server_address[:2]
    print(f"console: http://{host!s}:{port}/ ({board.source})", file=out, flush=True)
    worker.start()
    install_stop_signals(stop)
    try:
        stop.wait()
    finally:
        server.stopping.set()
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(console_main(__import__("sys").argv[1:]))
