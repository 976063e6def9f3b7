"""A lone request through the real dynamic batcher: claims on vs off, CPU and wall time per request.

Run: ``nice python bench/lone_request_bench.py [--requests 5000] [--rounds 3]``. One caller submits one
item at a time (concurrency 1) to a `DynamicBatcher` whose handler returns at once, so what is measured
is the batcher's own path: with claims the submit hands ``[item]`` to the executor itself; without, it
queues, wakes a worker task, which pops the batch and hands it to the executor. With a batch window
(``--delay-ms``, the CUDA default is 2) the unclaimed path also waits that long for companions.
Rounds alternate the two settings; it prints the median and min-max per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eca_serve.batching import BatchPolicy, DynamicBatcher  # noqa: E402


async def per_request(claim: bool, requests: int, delay_ms: float) -> tuple[float, float]:
    """(wall us, CPU us) per lone request."""
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_ms=delay_ms, instances=2, claim_idle=claim)
    async with DynamicBatcher(lambda items: items, policy) as batcher:
        for i in range(200):
            await batcher.submit(i)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(requests):
            await batcher.submit(i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = batcher.stats()
    assert (stats.claimed_count > 0) == claim
    return 1e6 * wall / requests, 1e6 * cpu / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the policy's max_queue_delay_ms")
    args = parser.parse_args()
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for claim in (True, False) if r % 2 == 0 else (False, True):
            runs[claim].append(asyncio.run(per_request(claim, args.requests, args.delay_ms)))
    for claim, values in runs.items():
        wall, cpu = [v[0] for v in values], [v[1] for v in values]
        print(f"claims {'on ' if claim else 'off'} (delay {args.delay_ms:g} ms): wall {statistics.median(wall):7.1f} us "
              f"[{min(wall):.1f}-{max(wall):.1f}], CPU {statistics.median(cpu):6.1f} us [{min(cpu):.1f}-{max(cpu):.1f}] per request")


if __name__ == "__main__":
    main()
