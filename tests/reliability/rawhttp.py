"""Misbehaving HTTP/1.1 clients on raw sockets; shared by tests/reliability and bench/reliability_report.py.

httpx cannot send less body than it declares, stall after the headers, trickle bytes or vanish at a
chosen moment; these helpers can. Each returns what the server answered (or None) and never raises
for the server's behaviour, only for a refused connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import select
import socket
import struct
import time
from urllib.parse import urlsplit


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """A parsed HTTP/1.1 answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0
    raw: bytes = dataclasses.field(default=b"", repr=False)
    body_sent: int | None = None  # body bytes the client had sent when the answer came (`trickle`)

    def json(self) -> object:
        return json.loads(self.body)


def connect(base: str, timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to the server at ``base`` (``http://host:port``)."""
    parts = urlsplit(base)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    """The request line and headers, ending with the blank line."""
    lines = [f"{method} {path} HTTP/1.1", "Host: reliability", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def close_abruptly(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client or a dropped network would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_response(sock: socket.socket, timeout_s: float) -> RawResponse | None:
    """Read one answer (Content-Length or connection close delimited); None if none arrives in ``timeout_s``."""
    start = time.monotonic()
    data = b""
    while time.monotonic() - start < timeout_s:
        ready, _, _ = select.select([sock], [], [], max(0.0, timeout_s - (time.monotonic() - start)))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except OSError:  # reset: keep what arrived before it
            break
        if not chunk:
            break
        data += chunk
        parsed = parse_response(data)
        if parsed is not None:
            return RawResponse(parsed.status, parsed.headers, parsed.body, time.monotonic() - start, data)
    return parse_response(data, complete=True)


def parse_response(data: bytes, complete: bool = False) -> RawResponse | None:
    """The answer in ``data`` once it is whole (or, with ``complete``, whatever there is)."""
    if b"\r\n\r\n" not in data:
        return None
    header_block, body = data.split(b"\r\n\r\n", 1)
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = headers.get("content-length")
    if length is not None and len(body) >= int(length):
        return RawResponse(status, headers, body[: int(length)])
    return RawResponse(status, headers, body) if complete else None


def timed_from(answer: RawResponse | None, start: float) -> RawResponse | None:
    """``answer`` with ``seconds`` counted from ``start`` (a ``time.monotonic()``) rather than from its first read."""
    return None if answer is None else dataclasses.replace(answer, seconds=time.monotonic() - start)


def abort_mid_upload(base: str, path: str, content_type: str, declared: int, body: bytes, reset: bool = False) -> None:
    """Declare ``declared`` body bytes, send only ``body`` (fewer), then close (FIN, or RST with ``reset``)."""
    sock = connect(base)
    sock.sendall(head("POST", path, {"Content-Type": content_type, "Content-Length": str(declared)}) + body)
    time.sleep(0.05)  # let the server start reading the body
    if reset:
        close_abruptly(sock)
    else:
        sock.close()


def send_and_vanish(base: str, path: str, headers: dict[str, str], body: bytes) -> None:
    """Send a complete request, then close before the answer (the client gave up)."""
    sock = connect(base)
    sock.sendall(head("POST", path, {**headers, "Content-Length": str(len(body))}) + body)
    close_abruptly(sock)


def trickle(base: str, path: str, content_type: str, body: bytes, chunk: int, interval_s: float,
            give_up_s: float) -> RawResponse | None:
    """Send ``body`` ``chunk`` bytes every ``interval_s`` (a slow client); stop at the server's answer or after ``give_up_s``.

    The answer's ``body_sent`` tells how much of ``body`` had gone out when it came.
    """
    sock = connect(base)
    start = time.monotonic()
    sent = 0
    try:
        sock.sendall(head("POST", path, {"Content-Type": content_type, "Content-Length": str(len(body))}))
        for offset in range(0, len(body), chunk):
            if time.monotonic() - start > give_up_s:
                break
            try:
                sock.sendall(body[offset: offset + chunk])
            except OSError:  # the server answered and closed: read what it said
                break
            sent = min(len(body), offset + chunk)
            answer = read_response(sock, interval_s) if select.select([sock], [], [], interval_s)[0] else None
            if answer is not None:
                return _sent(timed_from(answer, start), sent)
        return _sent(timed_from(read_response(sock, max(0.0, give_up_s - (time.monotonic() - start))), start), sent)
    finally:
        sock.close()


def _sent(answer: RawResponse | None, sent: int) -> RawResponse | None:
    return None if answer is None else dataclasses.replace(answer, body_sent=sent)


def stall(base: str, path: str, headers: dict[str, str], prefix: bytes = b"", wait_s: float = 10.0) -> RawResponse | None:
    """Send the headers (and ``prefix`` of the body), then nothing; the server's answer within ``wait_s``, if any."""
    sock = connect(base)
    start = time.monotonic()
    try:
        sock.sendall(head("POST", path, headers) + prefix)
        return timed_from(read_response(sock, wait_s), start)
    finally:
        sock.close()


def encode_request(path: str, headers: dict[str, str], body: bytes) -> bytes:
    """A whole ``POST`` on a connection the server closes after answering."""
    return head("POST", path, {**headers, "Content-Length": str(len(body)), "Connection": "close"}) + body


async def exchange(base: str, request: bytes, timeout_s: float) -> tuple[RawResponse | None, str]:
    """Send pre-encoded ``request`` on a new connection and read the answer: (answer, "") or (None, why not).

    A flood built from this costs the client a few socket calls per request (an HTTP client library
    costs a millisecond or two of CPU each, which on a small machine slows the flood down to what the
    server can take).
    """
    parts = urlsplit(base)
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout_s)
    except (OSError, asyncio.TimeoutError) as exc:
        return None, f"connect: {type(exc).__name__} {exc}"
    data = b""
    try:
        writer.write(request)
        await writer.drain()
        while (answer := parse_response(data)) is None:
            # Parse as bytes arrive: a server that answers before reading the whole body may reset the
            # connection right after its answer, and a read-to-EOF would lose that answer.
            chunk = await asyncio.wait_for(reader.read(65536), max(0.0, timeout_s - (time.monotonic() - start)))
            if not chunk:
                answer = parse_response(data, complete=True)
                break
            data += chunk
    except (OSError, asyncio.TimeoutError) as exc:
        answer = parse_response(data, complete=True)
        if answer is None:
            return None, f"after {time.monotonic() - start:.1f} s: {type(exc).__name__} {exc}"
    finally:
        writer.close()
    if answer is None:
        return None, f"connection closed after {time.monotonic() - start:.1f} s with {len(data)} bytes and no answer"
    return timed_from(answer, start), ""
