"""Focused phases of the reliability report: floods on top of steady load, and clients that disconnect.

``python bench/reliability_report.py --phase flood`` (or ``--phase disconnect``) runs one against a real
``eca-serve serve`` process on the shipped classifier. Each phase alternates runs without and with the
disturbance (``--rounds`` pairs) so that a machine shared with other work shows up as spread, not as a
false effect. Every client is a raw socket (one connection per request): an HTTP library would spend
more client CPU than the server does, and client and server share the machine's cores.

flood: ``--concurrency`` steady closed-loop clients; in the "with" runs, ``--flood-size`` requests at
once every ``--flood-every`` seconds. Prints the latency of 503 rejections (p50/p99), the steady
clients' accepted p99 with vs without floods, lost requests and 5xx (503 rejections excluded). Then one
flood alone on two more servers, for the cost of a refusal itself: eca-serve with an in-flight limit of 1
(all but one request refused) and bench/peers/refusing_server.py (uvicorn answering 503 with no framework):
the server's CPU per request, this client's, and the 503 latency. The latter is the floor of the figure.

disconnect: the same steady clients; in the "with" runs, ``--leavers`` clients that send a whole request
and close the connection 10 ms later, over and over. Prints the images the server inferred for them
(``eca_serve_inference_count`` minus the steady clients' answers) as a share of the images they sent,
the server's count of cancelled requests, and the steady clients' throughput with vs without them.
Each round also runs the same leavers sending ``GET /healthz`` instead (no body, no model work): what
their connections alone cost the steady clients, the floor under any handling of the leavers' requests.

Both phases print the server's and this client's CPU seconds per run (they share the cores); the
disconnect phase also the server's CPU per leaver beyond what the steady answers cost alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.reliability import rawhttp
from tests.reliability.clients import metric
from tests.reliability.serverproc import ServerProcess, start_server
from tests.serving_utils import free_port

REJECTED = 503
LEAVE_AFTER_S = 0.010
PROBE = b"GET /healthz HTTP/1.1\r\nHost: reliability\r\n\r\n"  # the control leavers' request: no model work


@dataclass
class Run:
    """What one run saw."""

    seconds: float
    accepted: list[float] = field(default_factory=list)  # steady clients' 200s, latency in s
    rejected: list[float] = field(default_factory=list)  # 503s (steady or flood)
    statuses: dict[int, int] = field(default_factory=dict)
    lost: int = 0
    left: int = 0  # requests the leavers sent and walked away from
    inferred: float = 0.0  # images the server inferred during the run
    cancelled: float = 0.0  # requests the server counted as cancelled by disconnect
    server_cpu: float = 0.0  # CPU seconds (user + system) of the server process during the run
    client_cpu: float = 0.0  # CPU seconds of this load generator during the run

    def count(self, status: int | None, seconds: float, steady: bool) -> None:
        if status is None:
            self.lost += 1
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200 and steady:
            self.accepted.append(seconds)
        elif status == REJECTED:
            self.rejected.append(seconds)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 and s != REJECTED)


def ms(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) in milliseconds; nan without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def request_bytes(model: str, image: bytes) -> bytes:
    return rawhttp.encode_request(f"/v1/models/{model}/classify", {"Content-Type": "image/png"}, image)


async def steady(base: str, request: bytes, run: Run, stop_at: float) -> None:
    while time.perf_counter() < stop_at:
        answer, _ = await rawhttp.exchange(base, request, timeout_s=60)
        run.count(answer.status if answer else None, answer.seconds if answer else 0.0, steady=True)


async def floods(base: str, request: bytes, run: Run, stop_at: float, size: int, every_s: float) -> None:
    while time.perf_counter() + every_s < stop_at:
        await asyncio.sleep(every_s)
        answers = await asyncio.gather(*(rawhttp.exchange(base, request, timeout_s=120) for _ in range(size)))
        for answer, _ in answers:
            run.count(answer.status if answer else None, answer.seconds if answer else 0.0, steady=False)


async def leaver(base: str, request: bytes, run: Run, stop_at: float) -> None:
    host, port = base.removeprefix("http://").split(":")
    while time.perf_counter() < stop_at:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            continue
        writer.write(request)
        await writer.drain()
        await asyncio.sleep(LEAVE_AFTER_S)
        writer.transport.abort()  # RST: gone at once, as a client that timed out
        run.left += 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(base: str, model: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return (metric(text, "eca_serve_inference_count_total", model=model),
            metric(text, "eca_serve_requests_cancelled_total", model=model, reason="disconnect"))


async def one_run(server: ServerProcess, model: str, request: bytes, seconds: float, concurrency: int, *,
                  flood: tuple[int, float] | None = None, leavers: int = 0, leave_with: bytes | None = None) -> Run:
    run, base = Run(seconds), server.base
    before = counters(base, model)
    cpu_before = cpu_seconds(server.pid), time.process_time()
    stop_at = time.perf_counter() + seconds
    tasks = [steady(base, request, run, stop_at) for _ in range(concurrency)]
    if flood:
        tasks.append(floods(base, request, run, stop_at, *flood))
    tasks += [leaver(base, leave_with or request, run, stop_at) for _ in range(leavers)]
    await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # the last leavers' requests finish or are cancelled
    run.server_cpu, run.client_cpu = cpu_seconds(server.pid) - cpu_before[0], time.process_time() - cpu_before[1]
    after = counters(base, model)
    run.inferred, run.cancelled = after[0] - before[0], after[1] - before[1]
    return run


def flood_lines(pairs: list[tuple[Run, Run]], size: int) -> list[str]:
    lines = []
    for i, (quiet, loud) in enumerate(pairs):
        lines.append(f"round {i}: no flood  accepted p50 {ms(quiet.accepted, .5):7.1f} p99 {ms(quiet.accepted, .99):7.1f} ms "
                     f"(n={len(quiet.accepted)}) | floods of {size}: accepted p50 {ms(loud.accepted, .5):7.1f} "
                     f"p99 {ms(loud.accepted, .99):7.1f} ms (n={len(loud.accepted)}), 503 p50 {ms(loud.rejected, .5):7.1f} "
                     f"p99 {ms(loud.rejected, .99):7.1f} ms (n={len(loud.rejected)}), lost {quiet.lost + loud.lost}, "
                     f"5xx {quiet.server_errors + loud.server_errors}, statuses {dict(sorted(loud.statuses.items()))}")
        lines.append(f"    CPU s server/client: without {quiet.server_cpu:.2f}/{quiet.client_cpu:.2f}, with "
                     f"{loud.server_cpu:.2f}/{loud.client_cpu:.2f}")
    ratios = [ms(loud.accepted, .99) / ms(quiet.accepted, .99) for quiet, loud in pairs]
    rejected = [s for _, loud in pairs for s in loud.rejected]
    lines.append(f"all rounds: 503 p50 {ms(rejected, .5):.1f} ms p99 {ms(rejected, .99):.1f} ms (n={len(rejected)}); "
                 f"accepted p99 with/without floods {', '.join(f'{r:.2f}x' for r in ratios)}; "
                 f"lost {sum(q.lost + l.lost for q, l in pairs)}; 5xx {sum(q.server_errors + l.server_errors for q, l in pairs)}")
    return lines


def disconnect_lines(pairs: list[tuple[Run, Run]], controls: list[Run]) -> list[str]:
    lines = []
    for i, ((quiet, loud), probe) in enumerate(zip(pairs, controls)):
        spent = max(0.0, loud.inferred - len(loud.accepted))
        lines.append(f"round {i}: steady alone {len(quiet.accepted) / quiet.seconds:6.1f} req/s | with leavers "
                     f"{len(loud.accepted) / loud.seconds:6.1f} req/s ({len(loud.accepted) / max(1, len(quiet.accepted)):.3f}x); "
                     f"leavers sent {loud.left}, inferred for them {spent:.0f} ({100 * spent / max(1, loud.left):.1f}%), "
                     f"cancelled by disconnect {loud.cancelled:.0f}, lost {quiet.lost + loud.lost}, 5xx "
                     f"{quiet.server_errors + loud.server_errors}, steady statuses {dict(sorted(loud.statuses.items()))}")
        lines.append(f"    {cpu_line(quiet, loud, loud.left, 'leaver request')}")
        lines.append(f"    control, leavers sending GET /healthz: steady {len(probe.accepted) / probe.seconds:6.1f} req/s "
                     f"({len(probe.accepted) / max(1, len(quiet.accepted)):.3f}x), leavers sent {probe.left}; "
                     f"{cpu_line(quiet, probe, probe.left, 'probe leaver')}")
    return lines


def cpu_line(quiet: Run, loud: Run, extra: int, what: str) -> str:
    """Server and client CPU of both runs, and the server's CPU per ``extra`` request beyond the steady load.

    The steady load's share of the "with" run is the "without" run's CPU per accepted request times the
    "with" run's accepted requests.
    """
    per_steady = quiet.server_cpu / max(1, len(quiet.accepted))
    beyond = loud.server_cpu - per_steady * len(loud.accepted)
    return (f"CPU s server/client: without {quiet.server_cpu:.2f}/{quiet.client_cpu:.2f}, with {loud.server_cpu:.2f}/"
            f"{loud.client_cpu:.2f}; server {1000 * per_steady:.2f} ms per steady answer, "
            f"{1000 * beyond / max(1, extra):.2f} ms per {what} (n={extra})")


def refusal_cost(repository: Path, model: str, request: bytes, size: int) -> list[str]:
    """One flood of ``size`` alone on eca-serve refusing all but one request, then on the bare refusing server."""
    lines = []
    eca = start_server(repository, env={"ECA_SERVE_MODELS": f'["{model}"]', "ECA_SERVE_MAX_INFLIGHT": "1"})
    try:
        lines.append(flood_alone(eca, request, size, "eca-serve, in-flight limit 1"))
    finally:
        eca.stop()
    bare = start_refusing_server()
    try:
        lines.append(flood_alone(bare, request, size, "bare uvicorn 503 (bench/peers)"))
    finally:
        bare.stop()
    return lines


def start_refusing_server(ready_timeout_s: float = 30.0) -> ServerProcess:
    port = free_port()
    script = Path(__file__).resolve().parent / "peers" / "refusing_server.py"
    process = subprocess.Popen([sys.executable, str(script), "--port", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", Path(os.devnull))
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(server.base, timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop(timeout_s=5)
    raise RuntimeError(f"the refusing server did not answer within {ready_timeout_s} s")


async def burst(base: str, request: bytes, size: int) -> list[tuple[rawhttp.RawResponse | None, str]]:
    return await asyncio.gather(*(rawhttp.exchange(base, request, timeout_s=120) for _ in range(size)))


def flood_alone(server: ServerProcess, request: bytes, size: int, name: str) -> str:
    cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
    answers = asyncio.run(burst(server.base, request, size))
    client = time.process_time() - client_before
    time.sleep(0.3)  # the server's last sends
    cpu = cpu_seconds(server.pid) - cpu_before
    refused = [answer.seconds for answer, _ in answers if answer is not None and answer.status == REJECTED]
    return (f"flood of {size} alone, {name}: server CPU {1000 * cpu / size:.2f} ms per request, client CPU "
            f"{1000 * client / size:.2f} ms; 503 p50 {ms(refused, .5):.0f} ms p99 {ms(refused, .99):.0f} ms (n={len(refused)})")


def run_phase(phase: str, repository: Path, model: str, seconds: float, rounds: int, concurrency: int, flood_size: int,
              flood_every: float, leavers: int) -> int:
    image = (Path(__file__).resolve().parents[1] / "examples" / "star.png").read_bytes()
    request = request_bytes(model, image)
    server: ServerProcess = start_server(repository, env={"ECA_SERVE_MODELS": f'["{model}"]'})
    print(f"eca-serve reliability, phase {phase}: {model}, {concurrency} steady clients, {rounds} x ({seconds:g} s without + "
          f"{seconds:g} s with), client and server on the same {os.cpu_count()} cores", flush=True)
    pairs: list[tuple[Run, Run]] = []
    controls: list[Run] = []
    try:
        asyncio.run(one_run(server, model, request, 3.0, concurrency))  # warm-up
        for _ in range(rounds):
            quiet = asyncio.run(one_run(server, model, request, seconds, concurrency))
            if phase == "flood":
                loud = asyncio.run(one_run(server, model, request, seconds, concurrency, flood=(flood_size, flood_every)))
            else:
                loud = asyncio.run(one_run(server, model, request, seconds, concurrency, leavers=leavers))
                controls.append(asyncio.run(one_run(server, model, request, seconds, concurrency, leavers=leavers,
                                                    leave_with=PROBE)))
            pairs.append((quiet, loud))
        lines = flood_lines(pairs, flood_size) if phase == "flood" else disconnect_lines(pairs, controls)
        alive = server.alive()
    finally:
        server.stop()
    if phase == "flood":
        lines += refusal_cost(repository, model, request, flood_size)
    print("\n".join([*lines, f"server {'alive' if alive else 'DIED'}"]))
    failed = not alive or any(q.lost + l.lost + q.server_errors + l.server_errors for q, l in pairs)
    return 1 if failed else 0
