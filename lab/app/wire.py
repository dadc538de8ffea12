"""HTTP/1.1 framing shared by the lab server and the load generator.

Only what the lab speaks: request and status lines, headers, Content-Length and chunked bodies,
and the `Upgrade: popshift-echo` switch to a line protocol. One module, so the two ends cannot
disagree about the framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
ECHO_PROTOCOL = "popshift-echo"


class ProtocolError(ValueError):
    """The peer sent something that is not the HTTP the lab speaks."""


class HttpStatusError(RuntimeError):
    """A response arrived, but not with the status the client asked for."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP status {status}")
        self.status = status


@dataclass(frozen=True)
class Head:
    """A parsed request or response head: the start line's parts and lower-cased headers."""

    start: tuple[str, str, str]
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


def parse_head(raw: bytes) -> Head:
    """Split a head (up to and including the blank line) into start line and headers."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise ProtocolError(str(exc)) from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3:
        raise ProtocolError(f"bad start line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ProtocolError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    return Head((parts[0], parts[1], parts[2]), headers)


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None when the peer closed cleanly between messages."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("head too long") from exc
    if len(raw) > MAX_HEAD:
        raise ProtocolError("head too long")
    return parse_head(raw)


async def read_body(reader: asyncio.StreamReader, head: Head) -> bytes:
    """The body announced by `head`: chunked, Content-Length, or none."""
    if head.header("transfer-encoding").lower() == "chunked":
        body = bytearray()
        async for piece in read_chunks(reader):
            body += piece
            if len(body) > MAX_BODY:
                raise ProtocolError("body too long")
        return bytes(body)
    length = head.header("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise ProtocolError(f"bad content-length {length!r}")
    return await reader.readexactly(int(length))


async def read_chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Yield the pieces of a chunked body as they arrive, until the last chunk."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {size_line!r}") from exc
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("chunk not terminated by CRLF")
        yield data


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def encode_head(start: str, headers: dict[str, str]) -> bytes:
    lines = [start, *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def request(method: str, target: str, host: str, headers: dict[str, str] | None = None) -> bytes:
    return encode_head(f"{method} {target} HTTP/1.1", {"Host": host, **(headers or {})})


REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
}


def response(status: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    start = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"
    if status != 101 and "Transfer-Encoding" not in headers:
        headers = {**headers, "Content-Length": str(len(body))}
    return encode_head(start, headers) + body


def status_of(head: Head) -> int:
    """The status code of a response head."""
    version, code, _ = head.start
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"bad status line {' '.join(head.start)!r}")
    return int(code)
