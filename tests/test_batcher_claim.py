"""Claims: a lone request on an idle batcher runs at once, concurrency still batches.

Real batcher, real executor threads, a recording handler, the loop on a manual clock: "at once" is
asserted on the batcher's own counters (a claim recorded, no fill wait) and on the loop's clock, which
never moves unless a test advances it.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.errors import RequestTimeoutError, ShuttingDownError
from tests.batching_helpers import LIMIT_S, Recorder, now, occupy, run, settle, spawn
from tests.manual_clock import advance


async def idle(batcher: DynamicBatcher) -> None:
    """Return once no run is in flight (the handler's thread finished and its result was taken)."""
    for _ in range(1000):
        if not batcher.stats().in_flight:
            return
        await asyncio.to_thread(lambda: None)
    raise AssertionError("a run stayed in flight")


def test_a_lone_request_runs_at_once_even_with_a_batch_window() -> None:
    async def body() -> None:
        rec = Recorder()
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=8, max_queue_delay_ms=5000)) as b:
            assert await b.submit("alone") == ("alone", 0)
            stats = b.stats()
            assert now() == 0.0  # the 5 s window was never waited for
        assert (stats.claimed_count, stats.fill_wait_count) == (1, 0)
        assert stats.batch_size_histogram == {1: 1}
        assert (stats.execution_count, stats.inference_count, stats.queue_depth, stats.in_flight) == (1, 1, 0, 0)
        assert stats.queue_time_s == 0.0
        assert rec.batches == [["alone"]]

    run(body)


def test_without_claims_the_same_request_waits_for_the_window() -> None:
    async def body() -> None:
        rec = Recorder()
        policy = BatchPolicy(max_batch_size=8, max_queue_delay_ms=5000, claim_idle=False)
        async with DynamicBatcher(rec, policy) as b:
            task = asyncio.create_task(b.submit("alone"))
            await settle()
            assert not task.done() and b.stats().fill_wait_count == 1
            advance(5.0)
            assert await task == ("alone", 0)
            assert b.stats().claimed_count == 0

    run(body)


def test_requests_behind_a_running_claim_still_batch_and_wait_for_the_window() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=100)) as b:
            blocker = await occupy(b, rec)  # claimed: the only instance is busy
            tasks = spawn(b, list(range(6)))
            await settle()
            assert b.stats().queue_depth == 6  # no second claim on a busy instance
            rec.release.set()
            await asyncio.gather(*tasks[:4])  # a full batch goes without waiting
            assert now() == 0.0
            advance(0.1)  # the 2 left wait for the window, as before
            await asyncio.gather(blocker, *tasks)
            stats = b.stats()
        assert rec.batches == [["blocker"], [0, 1, 2, 3], [4, 5]]
        assert stats.claimed_count == 1 and stats.fill_wait_count >= 1
        assert stats.batch_size_histogram == {1: 1, 2: 1, 4: 1}

    run(body)


def test_claims_use_each_idle_instance_once_then_queue() -> None:
    async def body() -> None:
        rec = Recorder(sleep_s=0.05)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0, instances=2)) as b:
            tasks = spawn(b, ["a", "b", "c", "d", "e"])
            await settle()
            stats = b.stats()
            assert (stats.claimed_count, stats.in_flight, stats.queue_depth) == (2, 2, 3)
            results = await asyncio.gather(*tasks)
        assert [item for item, _ in results] == ["a", "b", "c", "d", "e"]
        assert sorted(map(sorted, rec.batches)) == [["a"], ["b"], ["c", "d", "e"]]

    run(body)


def test_a_claimed_request_times_out_and_is_cancellable_like_any_other() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            slow = asyncio.create_task(b.submit("slow", timeout_s=1.0))
            assert await asyncio.to_thread(rec.entered.wait, LIMIT_S)
            advance(1.0)
            with pytest.raises(RequestTimeoutError, match="running"):
                await slow
            rec.release.set()
            await idle(b)
            gone = asyncio.create_task(b.submit("gone"))
            await settle()
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            await idle(b)  # the cancelled caller's run still ends in its thread before the slot is free
            assert await b.submit("after") == ("after", 2)
            stats = b.stats()
        assert (stats.timeout_count, stats.cancelled_count, stats.claimed_count) == (1, 1, 3)
        assert rec.batches == [["slow"], ["gone"], ["after"]]

    run(body)


def test_stop_drains_a_running_claim_and_refuses_new_work() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        b = DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0))
        await b.start()
        claimed = await occupy(b, rec)
        stopping = asyncio.create_task(b.stop(drain=True, grace_s=5.0))
        await settle()
        with pytest.raises(ShuttingDownError):
            await b.submit("late")
        rec.release.set()
        await stopping
        assert await claimed == ("blocker", 0)

    run(body)


def test_stop_without_drain_answers_a_running_claim() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        b = DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0))
        await b.start()
        claimed = await occupy(b, rec)
        await b.stop(drain=False)
        with pytest.raises(ShuttingDownError):
            await claimed
        rec.release.set()

    run(body)


def test_try_claim_prepares_and_runs_in_one_executor_call() -> None:
    async def body() -> None:
        threads: list[str] = []

        def handler(items: list[str]) -> list[str]:
            threads.append(threading.current_thread().name)
            return [item.upper() for item in items]

        def prepare() -> str:
            threads.append(threading.current_thread().name)
            return "decoded"

        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0), name="m") as b:
            future = b.try_claim(prepare)
            assert future is not None
            assert await future == "DECODED"
            stats = b.stats()
        assert len(threads) == 2 and threads[0] == threads[1] and threads[0].startswith("batcher-m")
        assert (stats.claimed_count, stats.execution_count, stats.batch_size_histogram) == (1, 1, {1: 1})

    run(body)


def test_try_claim_declines_while_busy_and_a_failing_prepare_answers_only_its_caller() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            called: list[int] = []
            assert b.try_claim(lambda: called.append(1)) is None and not called  # busy: nothing ran
            rec.release.set()
            await blocker
            await idle(b)

            def broken() -> str:
                raise ValueError("corrupt upload")

            future = b.try_claim(broken)
            assert future is not None
            with pytest.raises(ValueError, match="corrupt upload"):
                await future
            await idle(b)
            assert await b.submit("next") == ("next", 1)
            stats = b.stats()
        assert (stats.execution_count, stats.failed_execution_count) == (2, 0)  # the failed prepare ran no batch

    run(body)


def test_a_claim_whose_caller_left_during_prepare_is_not_inferred() -> None:
    async def body() -> None:
        rec = Recorder()
        entered, release = threading.Event(), threading.Event()

        def prepare() -> str:  # a decode the client walks away from
            entered.set()
            assert release.wait(LIMIT_S)
            return "decoded"

        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            future = b.try_claim(prepare)
            assert future is not None
            assert await asyncio.to_thread(entered.wait, LIMIT_S)
            future.cancel()  # what a disconnect does to the awaiting request
            release.set()
            await idle(b)
            assert await b.submit("next") == ("next", 0)
            stats = b.stats()
        assert rec.batches == [["next"]]  # the left request's item never reached the handler
        assert (stats.cancelled_count, stats.execution_count, stats.claimed_count) == (1, 1, 2)

    run(body)
