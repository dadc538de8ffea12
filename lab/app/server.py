"""The lab's TCP service: every answer says which PoP and which server processed the request.

Runs on each compute server of the lab, listening on the anycast VIP (on loopback). Endpoints:

- `GET /whoami` -> JSON `{pop, server, client, local, pid, served}`; keep-alive is honoured.
- `GET /stream` with `Upgrade: popshift-echo` -> 101, then a line protocol: every line the client
  sends is answered by one JSON line `{pop, server, echo}`. Long-lived, traffic both ways, so a
  connection that the data plane moved to another server breaks visibly (reset or timeout).
- `GET /stream?interval=0.1&count=N` (no Upgrade) -> a chunked response of JSON lines, one every
  `interval` seconds, `count` of them (0 = until the client goes away).
- `GET /blob?bytes=N` -> N bytes (up to 64 MiB): a download whose return path can be measured.
- `GET /healthz` -> `ok`.

Stdlib asyncio only: the lab must not depend on a framework's connection handling when it is
the connection handling it tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from lab.app import wire


@dataclass
class Identity:
    """Who this server is, and how much it has served (for /whoami and the lab's status)."""

    pop: str
    server: str
    served: int = 0
    streams: int = 0

    def answer(self, **extra: object) -> dict[str, object]:
        return {"pop": self.pop, "server": self.server, **extra}


def _peer(writer: asyncio.StreamWriter, name: str) -> str:
    addr = writer.get_extra_info(name)
    return f"{addr[0]}:{addr[1]}" if addr else ""


def _json_line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, me: Identity) -> None:
    """After the 101: one JSON line per client line, until the client closes."""
    writer.write(
        wire.response(101, {"Upgrade": wire.ECHO_PROTOCOL, "Connection": "Upgrade"}),
    )
    await writer.drain()
    while line := await reader.readline():
        writer.write(_json_line(me.answer(echo=line.decode(errors="replace").rstrip("\r\n"))))
        await writer.drain()


async def _push(writer: asyncio.StreamWriter, me: Identity, query: dict[str, list[str]]) -> None:
    """A chunked response of JSON lines, one per interval."""
    interval = min(max(float(query.get("interval", ["0.1"])[0]), 0.001), 60.0)
    count = int(query.get("count", ["0"])[0])
    writer.write(wire.response(200, _JSONL | {"Transfer-Encoding": "chunked"}))
    seq = 0
    while count <= 0 or seq < count:
        writer.write(wire.chunk(_json_line(me.answer(seq=seq))))
        await writer.drain()
        seq += 1
        if count <= 0 or seq < count:
            await asyncio.sleep(interval)
    writer.write(wire.LAST_CHUNK)
    await writer.drain()


_JSON = {"Content-Type": "application/json"}
MAX_BLOB = 64 << 20
_JSONL = {"Content-Type": "application/x-ndjson"}


async def _serve_one(
    head: wire.Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, me: Identity
) -> bool:
    """Answer one request; True if the connection may carry another."""
    method, target, _ = head.start
    url = urlsplit(target)
    me.served += 1
    if method != "GET":
        writer.write(wire.response(405, {}))
        return True
    if url.path == "/whoami":
        body = _json_line(
            me.answer(
                client=_peer(writer, "peername"),
                local=_peer(writer, "sockname"),
                pid=os.getpid(),
                served=me.served,
            )
        )
        writer.write(wire.response(200, _JSON, body))
        return True
    if url.path == "/blob":
        size = min(max(int(parse_qs(url.query).get("bytes", ["0"])[0]), 0), MAX_BLOB)
        writer.write(wire.response(200, {"Content-Type": "application/octet-stream"}, bytes(size)))
        return True
    if url.path == "/healthz":
        writer.write(wire.response(200, {"Content-Type": "text/plain"}, b"ok\n"))
        return True
    if url.path == "/stream":
        me.streams += 1
        try:
            if head.header("upgrade").lower() == wire.ECHO_PROTOCOL:
                await _echo(reader, writer, me)
                return False
            await _push(writer, me, parse_qs(url.query))
            return True
        finally:
            me.streams -= 1
    writer.write(wire.response(404, {}))
    return True


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, me: Identity) -> None:
    """One connection: requests until the client closes or asks to."""
    try:
        while (head := await wire.read_head(reader)) is not None:
            await wire.read_body(reader, head)
            keep = await _serve_one(head, reader, writer, me)
            await writer.drain()
            if not keep or head.header("connection").lower() == "close":
                break
    except ValueError:  # a ProtocolError, or a query parameter that is not a number
        writer.write(wire.response(400, {"Connection": "close"}))
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        pass  # the client went away; nothing to answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await writer.wait_closed()


async def start(me: Identity, host: str, port: int) -> asyncio.Server:
    """A listening server (port 0 picks one: tests read it from `server.sockets`)."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(reader, writer, me)

    return await asyncio.start_server(on_connect, host, port, reuse_address=True, backlog=1024)


async def serve(me: Identity, host: str, port: int) -> None:
    """Serve until cancelled; asyncio.run then cancels the open connections' handlers.

    Not `async with server`: its exit waits for every connection to end, and a long-lived
    echo connection never does, so SIGTERM would hang until SIGKILL.
    """
    server = await start(me, host, port)
    try:
        await server.serve_forever()
    finally:
        server.close()


async def _main(args: argparse.Namespace) -> None:
    me = Identity(pop=args.pop, server=args.server)
    task = asyncio.ensure_future(serve(me, args.host, args.port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="popshift lab HTTP server")
    parser.add_argument("--pop", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default loopback; the lab gives 0.0.0.0 inside each "
        "compute server's network namespace, lab/namespaces.py)",
    )
    parser.add_argument("--port", type=int, default=80)
    return parser


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_main(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
