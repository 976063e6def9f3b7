"""A crashed batcher worker: its model is not ready, requests get NotReadyError, the worker is restarted.

Real batcher, real executor threads; the faults are real exceptions raised by the handler or the on_batch
hook that the batcher cannot treat as a per-batch error (``BaseException``s that are not ``Exception``s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.batching.worker import log_crash, restart_delay_s
from eca_serve.errors import NotReadyError, ShuttingDownError
from tests.manual_clock import advance, run_with_manual_clock

LIMIT_S = 5.0


class WorkerFault(BaseException):
    """Not an ``Exception``: the batcher cannot hand it to a batch, so it ends the worker."""


class FaultyHandler:
    """Doubles each item; raises `WorkerFault` for items named in ``faults``. Holds its first call until released."""

    def __init__(self, faults: set[str]) -> None:
        self.faults = faults
        self.batches: list[list[Any]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        if len(self.batches) == 1:
            self.release.wait(LIMIT_S)
        if self.faults & set(items):
            raise WorkerFault(f"fault on {items}")
        return [item * 2 for item in items]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_a_crashed_worker_refuses_requests_keeps_the_queue_and_is_restarted() -> None:
    async def body() -> None:
        handler = FaultyHandler({"poison"})
        health: list[bool] = []
        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0), name="m") as b:
            b.watch(health.append)
            poison = asyncio.create_task(b.submit("poison"))
            assert await asyncio.to_thread(handler.entered.wait, LIMIT_S)
            queued = [asyncio.create_task(b.submit(x)) for x in ("a", "b")]
            await settle()
            handler.release.set()
            with pytest.raises(NotReadyError, match="crashed"):
                await poison
            await settle()
            assert (b.healthy, b.running, health) == (False, True, [False])
            with pytest.raises(NotReadyError, match="restarting"):
                await b.submit("refused")
            assert b.stats().queue_depth == 2 and not any(t.done() for t in queued)
            advance(restart_delay_s(1))
            assert await asyncio.gather(*queued) == ["aa", "bb"]  # accepted before the crash: served after it
            assert (b.healthy, health) == (True, [False, True])
            assert await b.submit("c") == "cc"
            assert b.stats().worker_crash_count == 1
        assert handler.batches == [["poison"], ["a"], ["b"], ["c"]]

    run_with_manual_clock(body, LIMIT_S * 2)


def test_a_fault_in_the_on_batch_hook_answers_the_batch_then_restarts_the_worker() -> None:
    calls: list[int] = []

    def on_batch(size: int, queue_times: list[float], compute_s: float) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise WorkerFault("metrics hook bug")

    async def body() -> None:
        policy = BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)
        async with DynamicBatcher(lambda items: [i + 1 for i in items], policy, on_batch=on_batch) as b:
            assert await b.submit(1) == 2  # the batch was answered before the hook failed
            await settle()
            assert not b.healthy
            advance(restart_delay_s(1))
            await settle()
            assert b.healthy
            assert await b.submit(2) == 3
        assert calls == [1, 1]

    run_with_manual_clock(body, LIMIT_S * 2)


def test_crashes_in_a_row_back_off_and_then_answer_the_queue_with_errors() -> None:
    async def body() -> None:
        handler = FaultyHandler({"p1", "p2", "p3"})
        handler.release.set()
        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)) as b:
            tasks = [asyncio.create_task(b.submit(x)) for x in ("p1", "p2", "p3", "ok")]
            for crash in (1, 2):
                await asyncio.wait([tasks[crash - 1]])
                await settle()
                advance(restart_delay_s(crash) / 2)
                await settle()
                assert not b.healthy  # still backing off
                advance(restart_delay_s(crash) / 2)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, NotReadyError) for o in outcomes)  # "ok" too: failed after the 3rd crash
            assert b.stats().worker_crash_count == 3
            advance(restart_delay_s(3))
            await settle()
            assert await b.submit("fine") == "finefine"
        assert handler.batches == [["p1"], ["p2"], ["p3"], ["fine"]]

    run_with_manual_clock(body, LIMIT_S * 2)


def test_stop_while_a_worker_is_down_answers_the_queue_and_restarts_nothing() -> None:
    async def body() -> None:
        handler = FaultyHandler({"poison"})
        health: list[bool] = []
        b = DynamicBatcher(handler, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0))
        b.watch(health.append)
        await b.start()
        poison = asyncio.create_task(b.submit("poison"))
        assert await asyncio.to_thread(handler.entered.wait, LIMIT_S)
        queued = asyncio.create_task(b.submit("queued"))
        await settle()
        handler.release.set()
        with pytest.raises(NotReadyError):
            await poison
        await settle()
        await b.stop(drain=True, grace_s=1.0)
        with pytest.raises(ShuttingDownError):
            await queued
        advance(60.0)
        await settle()
        assert health == [False] and not b.running and handler.batches == [["poison"]]

    run_with_manual_clock(body, LIMIT_S * 2)


def test_restart_delays_double_up_to_a_cap() -> None:
    delays = [restart_delay_s(n) for n in range(1, 12)]
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
    assert delays == sorted(delays) and delays[-1] == 5.0


def test_a_worker_that_crashes_forever_logs_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="eca_serve.batching"):
        for streak in range(1, 101):
            log_crash("m", 0, streak, restart_delay_s(streak), WorkerFault("again"))
    assert len(caplog.records) == 7  # streaks 1, 2, 4, 8, 16, 32, 64
    assert caplog.records[0].exc_info is not None and all(r.exc_info is None for r in caplog.records[1:])
