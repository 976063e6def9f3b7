"""A closed-loop HTTP/1.1 load generator that costs the server's machine little CPU.

Each virtual client holds one keep-alive connection and sends pre-encoded request bytes, reading
only the status line, the headers and ``Content-Length`` bytes of body: no HTTP library per request
(httpx costs about 1-2 ms of CPU per request, which on 2 shared cores is taken from the server).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """What one load cell measured.

    Attributes:
        seconds: Wall time of the cell.
        latencies: Seconds per answered request, in completion order.
        statuses: HTTP status (gRPC: status code name) -> count.
        client_cpu_s: CPU seconds this process spent (the load generator's own cost).
        server_cpu_s: CPU seconds the server process spent, when its pid was given.
        errors: Transport errors (connection reset, malformed answer) -> count.
    """

    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int | str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart_request(url: str, body: bytes, filename: str = "photo.jpg", content_type: str = "image/jpeg") -> bytes:
    """The bytes of one ``POST url`` with ``body`` as multipart field ``file``."""
    boundary = uuid.uuid4().hex
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
               f"Content-Type: {content_type}\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    return _request(url, payload, f"multipart/form-data; boundary={boundary}")


def raw_request(url: str, body: bytes, content_type: str = "image/jpeg") -> bytes:
    """The bytes of one ``POST url`` with ``body`` as the raw request body."""
    return _request(url, body, content_type)


def _request(url: str, payload: bytes, content_type: str) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:] if line[:15].lower() == b"content-length:"), None)
    if length is None:
        raise ValueError("answer without Content-Length")
    await reader.readexactly(length)
    return status


async def run_load(url: str, requests: list[bytes], concurrency: int, seconds: float, warmup_s: float = 0.0,
                   server_pid: int | None = None) -> LoadResult:
    """``concurrency`` clients send ``requests`` round-robin, each waiting for its answer.

    Only answers that arrive in the window of ``seconds`` after ``warmup_s`` are recorded, so
    neither the start-up burst (every client sending at once into idle model instances) nor the
    drain at the end counts; the rate is those answers over the window. With ``server_pid``, the
    server's CPU seconds in the window are recorded too.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = LoadResult(seconds=0.0)
    measured_from = time.perf_counter() + warmup_s
    deadline = measured_from + seconds

    async def client(offset: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        k = offset
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(requests[k % len(requests)])
                k += 1
                try:
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                end = time.perf_counter()
                if measured_from <= end <= deadline:
                    result.latencies.append(end - start)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
    await asyncio.sleep(max(0.0, measured_from - time.perf_counter()))
    cpu, server_cpu = time.process_time(), process_cpu_s(server_pid) if server_pid else 0.0
    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
    result.client_cpu_s = time.process_time() - cpu
    result.server_cpu_s = process_cpu_s(server_pid) - server_cpu if server_pid else 0.0
    await asyncio.gather(*tasks)
    result.seconds = seconds
    return result
