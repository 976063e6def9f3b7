"""Floods far above capacity against a server with a tiny queue: fast 503s, right answers, nothing lost, bounded queues."""

from __future__ import annotations

import asyncio
import collections
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest

from eca_serve.settings import Settings
from tests.reliability.clients import client_limits, error_problems, metric, same_classes, top_classes, wait_idle
from tests.reliability.corpus import encode, picture
from tests.reliability.served import CLASSIFIER, Repository, Served, assert_still_serving, serve

FLOOD = 200  # concurrent requests per wave
WAVES = 2
QUEUE = 2  # max_queue_size: with batches of at most 2, at most 2 images wait
INFLIGHT = 64  # max_inflight_requests: beyond this, 503 before the body is read
IMAGES = [encode(picture((64, 64), seed=100 + i), "PNG") for i in range(8)]
PATH = f"/v1/models/{CLASSIFIER}/classify?top_k=8"


@dataclass(frozen=True)
class Outcome:
    """One flood request: which image, its HTTP answer (None if it got none) and its latency."""

    image: int
    response: httpx.Response | None
    error: str
    seconds: float


@pytest.fixture(scope="module")
def overload_server(repository: Repository) -> Iterator[Served]:
    settings = Settings(model_repository=repository.root, models=[CLASSIFIER], max_batch_size=2, max_queue_size=QUEUE,
                        max_queue_delay_ms=0, max_inflight_requests=INFLIGHT, timeout_s=60,
                        max_inflight=INFLIGHT)  # the model's own limit (tests/test_admission.py) would keep the queue from filling
    with serve(settings) as served:
        yield served


@pytest.fixture(scope="module")
def references(overload_server: Served) -> list[list[list[tuple[int, float]]]]:
    """Each image's answer when it is the only request."""
    answers = []
    for data in IMAGES:
        response = httpx.post(overload_server.url(PATH), content=data, headers={"content-type": "image/png"}, timeout=60)
        assert response.status_code == 200, response.text
        answers.append(top_classes(response.json()))
    return answers


async def one(client: httpx.AsyncClient, base: str, image: int) -> Outcome:
    start = time.perf_counter()
    try:
        response = await client.post(base + PATH, content=IMAGES[image], headers={"content-type": "image/png"})
        return Outcome(image, response, "", time.perf_counter() - start)
    except httpx.HTTPError as exc:
        return Outcome(image, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start)


class Peaks:
    """Samples the server's own in-flight count and queue depths (what /metrics exports) every 2 ms in a thread:
    a /metrics scrape would itself wait behind the flood and see only a few moments of it."""

    def __init__(self, served: Served) -> None:
        self.plane = served.app.state.dataplane
        self.inflight = self.queue_depth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.inflight = max(self.inflight, self.plane.inflight)
            batchers = [p.batcher for p in self.plane.models()]
            self.queue_depth = max(self.queue_depth, *(b.stats().queue_depth for b in batchers))


async def flood(base: str, count: int) -> list[Outcome]:
    async with httpx.AsyncClient(timeout=120, limits=client_limits(count + 4)) as client:
        return list(await asyncio.gather(*(one(client, base, i % len(IMAGES)) for i in range(count))))


def counters(served: Served) -> tuple[int, int, float]:
    """Images inferred, requests the batcher refused (queue full), requests refused before their body (in-flight limit)."""
    stats = httpx.get(served.url(f"/v2/models/{CLASSIFIER}/stats"), timeout=30).json()["model_stats"]
    refused = metric(httpx.get(served.url("/metrics"), timeout=30).text, "eca_serve_requests_total", endpoint="refused", status="503")
    return (sum(s["inference_count"] for s in stats), sum(s["inference_stats"]["fail"]["count"] for s in stats), refused)


@pytest.mark.parametrize("wave", range(WAVES))
def test_flood_gets_fast_503s_right_answers_and_loses_nothing(overload_server: Served, references: list, wave: int) -> None:
    before = counters(overload_server)
    with Peaks(overload_server) as peaks:
        outcomes = asyncio.run(flood(overload_server.base, FLOOD))

    lost = [o.error for o in outcomes if o.response is None]
    assert not lost, f"{len(lost)} of {FLOOD} requests got no HTTP answer: {lost[:3]}"
    statuses = {o.response.status_code for o in outcomes}
    accepted = [o for o in outcomes if o.response.status_code == 200]
    rejected = [o for o in outcomes if o.response.status_code == 503]
    assert statuses <= {200, 503}, f"statuses {statuses}: {[o.response.text[:120] for o in outcomes if o.response.status_code not in (200, 503)][:3]}"
    assert accepted and rejected, f"{len(accepted)} accepted, {len(rejected)} rejected: the flood must exceed capacity, yet be served"

    for o in rejected:
        assert o.response.headers.get("retry-after", "").isdigit(), f"503 without Retry-After: {dict(o.response.headers)}"
        assert not error_problems(o.response), error_problems(o.response)
    wrong = [o.image for o in accepted if not same_classes(top_classes(o.response.json()), references[o.image])]
    assert not wrong, f"{len(wrong)} accepted requests got another image's or a wrong answer (images {wrong[:5]})"

    wait_idle(overload_server.base)
    inferred, queue_full, refused = (after - earlier for after, earlier in zip(counters(overload_server), before))
    assert inferred == len(accepted), f"{inferred} images inferred for {len(accepted)} requests answered 200"
    assert queue_full > 0, "the flood never filled the batch queue"
    assert queue_full + refused == len(rejected), f"{len(rejected)} 503s, but {queue_full} queue-full + {refused:g} in-flight refusals"
    assert peaks.queue_depth <= QUEUE, f"queue depth peaked at {peaks.queue_depth}"
    assert peaks.inflight <= INFLIGHT, f"{peaks.inflight} requests in flight at once, above max_inflight_requests={INFLIGHT}"
    if refused:
        text = httpx.get(overload_server.url("/metrics"), timeout=30).text
        refusal_seconds = metric(text, "eca_serve_request_duration_seconds_sum", endpoint="refused")
        assert refusal_seconds > 0, "in-flight refusals are timed, not recorded as 0 s"
    # How fast rejections come back is a benchmark's question (bench/reliability_report.py prints it): with a
    # model this small the 200s are as quick as the 503s, and a fresh CI machine saw either order.
    fast, slow = statistics.median(o.seconds for o in rejected), statistics.median(o.seconds for o in accepted)
    print(f"wave {wave}: {len(accepted)} x 200 (median {slow * 1000:.0f} ms), {len(rejected)} x 503 "
          f"(median {fast * 1000:.0f} ms), peaks: {peaks.inflight} in flight, {peaks.queue_depth} queued, "
          f"503 reasons {collections.Counter(o.response.json()['error'][:40] for o in rejected)}")
    assert_still_serving(overload_server)
