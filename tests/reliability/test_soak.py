"""A short soak of a real ``eca-serve serve`` process: mixed traffic, every answer right, resident memory flat.

The server runs as its own process so that its RSS (``/proc/<pid>/status`` VmRSS) is the server's
alone. Memory is read after start, after a warm-up (first use of every code path: ONNX Runtime
arenas for each batch size, Pillow and numpy buffers, the thread pools) and at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from typing import Iterator

import httpx
import pytest

from tests.reliability.clients import client_limits
from tests.reliability.served import Repository
from tests.reliability.serverproc import ServerProcess, start_server
from tests.reliability.workload import Outcome, Planned, Workload, send

MIB = 1024 * 1024
CONCURRENCY = 4
WARM_UP_DRAWS = 200
# Growth allowed after warm-up. Measured (2 cores, this workload): once every request kind and image has been
# served, RSS still rises in steps of 2-20 MiB over the next ~1500 requests as glibc's per-thread arenas and
# ONNX Runtime's arena reach the high-water mark of rarer concurrent combinations, to a plateau (about
# 1.06 GiB in three runs) where it stays (+0.6 MiB over 800 requests). The short soak measures 400
# requests after a warm-up that usually ends within 30 MiB of that plateau (+3.5 and +16 MiB seen); the
# long soak lets the first half of its requests reach the plateau and measures the second half. A fresh
# CI machine once saw +33 MiB over the 400, so the short soak checks the last half of its requests, after
# the first half has brought it nearer the plateau: 32 MiB clears the allocator's steps, yet a leak of
# 160 KiB per request (one 224x224 float32 input tensor, say) fails it; the long soak, over 2500
# requests, fails a leak of 13 KiB per request.
GROWTH_LIMIT = 32 * MIB


@pytest.fixture(scope="module")
def server_process(repository: Repository) -> Iterator[ServerProcess]:
    server = start_server(repository.root, env={"ECA_SERVE_DECODE_THREADS": "2"})
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.output()}"


async def drive(server: ServerProcess, planned: list[Planned]) -> list[Outcome]:
    """Send ``planned``, ``CONCURRENCY`` requests at a time."""
    queue: asyncio.Queue[Planned] = asyncio.Queue()
    for item in planned:
        queue.put_nowait(item)
    outcomes: list[Outcome] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            outcomes.append(await send(client, server.base, queue.get_nowait()))

    async with httpx.AsyncClient(timeout=60, limits=client_limits(CONCURRENCY)) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return outcomes


def soak(server: ServerProcess, repository: Repository, measured: int, settle: int = 0, settle_measured: int = 0) -> None:
    """Warm up (every kind, `WARM_UP_DRAWS` + ``settle`` random requests), send ``measured`` more and check the
    growth over the last ``measured - settle_measured`` of them (the first ``settle_measured`` are reported only)."""
    workload = Workload(repository.classifier, repository.detector)
    draws = random.Random(1)
    start_rss = server.rss()
    warm_up = workload.every_kind() + [workload.draw(draws) for _ in range(WARM_UP_DRAWS + settle)]
    outcomes = asyncio.run(drive(server, warm_up))
    warm_rss = server.rss()
    outcomes += asyncio.run(drive(server, [workload.draw(draws) for _ in range(settle_measured)]))
    mid_rss = server.rss()
    outcomes += asyncio.run(drive(server, [workload.draw(draws) for _ in range(measured - settle_measured)]))
    end_rss = server.rss()
    statuses = Counter(o.status for o in outcomes)
    print(f"\nsoak: {len(outcomes)} requests {dict(statuses)}; RSS start {start_rss / MIB:.1f} MiB, "
          f"warm {warm_rss / MIB:.1f} MiB, mid {mid_rss / MIB:.1f} MiB, end {end_rss / MIB:.1f} MiB, "
          f"growth after warm-up {(end_rss - warm_rss) / MIB:+.1f} MiB, checked part {(end_rss - mid_rss) / MIB:+.1f} MiB")
    # The exact status of each hostile image is test_hostile_images.py's to check; here only a 5xx, a lost
    # request or an unclean body counts against them.
    problems = [f"{o.kind}: {p}" for o in outcomes for p in o.problems
                if not (o.kind.startswith("hostile") and p.startswith("status") and o.status is not None and o.status < 500)]
    assert server.alive(), server.output()
    assert not problems, f"{len(problems)} wrong answers, e.g. {problems[:5]}"
    assert not any(s is None or s >= 500 for s in statuses), statuses
    assert end_rss - mid_rss <= GROWTH_LIMIT, f"RSS grew {(end_rss - mid_rss) / MIB:.1f} MiB over the checked requests"


def test_soak_short(server_process: ServerProcess, repository: Repository) -> None:
    soak(server_process, repository, measured=400, settle_measured=200)


@pytest.mark.slow
def test_soak_long(server_process: ServerProcess, repository: Repository) -> None:
    """5000 requests (``ECA_SOAK_REQUESTS``); the first half lets memory reach its high-water mark, the second half
    must stay within the same limit. Run with ``pytest -m slow tests/reliability``."""
    total = int(os.environ.get("ECA_SOAK_REQUESTS", "5000"))
    soak(server_process, repository, measured=total - total // 2, settle=total // 2)
