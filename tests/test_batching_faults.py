"""Dynamic batcher under faults (timeouts, handler errors, cancellation, stop): real executor threads, a real (recording) handler, an event loop on a manual clock.

Timing rules (delays, timeouts, grace periods) are checked in the loop's own time, which moves only when a
test advances it, so no assertion depends on how fast a busy machine runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.errors import (
    BatchResultError,
    InvalidParameterError,
    RequestTimeoutError,
    ShuttingDownError,
)
from tests.manual_clock import advance
from tests.batching_helpers import LIMIT_S, Recorder, now, occupy, run, settle, spawn


def test_queued_request_that_times_out_is_never_executed() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            other = asyncio.create_task(b.submit("patient", timeout_s=LIMIT_S))
            late = asyncio.create_task(b.submit("late", timeout_s=0.125))
            await settle()
            advance(0.0625)
            await settle()
            assert not late.done() and b.stats().queue_depth == 2
            advance(0.0625)
            with pytest.raises(RequestTimeoutError, match="queued"):
                await late
            assert b.stats().queue_depth == 1
            rec.release.set()
            await asyncio.gather(blocker, other)
            assert b.stats().timeout_count == 1
        assert "late" not in rec.executed_items
        assert rec.batches == [["blocker"], ["patient"]]

    run(body)


def test_slow_handler_times_out_the_caller_and_the_batcher_keeps_serving() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        policy = BatchPolicy(max_batch_size=4, max_queue_delay_ms=0, timeout_s=0.125)
        async with DynamicBatcher(rec, policy) as b:
            slow = await occupy(b, rec)
            advance(0.125)
            with pytest.raises(RequestTimeoutError, match="running"):
                await slow
            assert b.stats().in_flight == 1  # the handler still runs; only its caller stopped waiting
            rec.release.set()
            assert await b.submit("next", timeout_s=LIMIT_S) == ("next", 1)
        assert rec.batches == [["blocker"], ["next"]]

    run(body)


def test_handler_exception_reaches_every_request_of_the_batch_then_serving_goes_on() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True, fail_on="bad")
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            tasks = spawn(b, ["ok1", "bad", "ok2"])
            await settle()
            rec.release.set()
            await blocker
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, ValueError) for o in outcomes)
            assert outcomes[0] is outcomes[1] is outcomes[2]  # the handler's own exception object
            assert await b.submit("after") == ("after", 2)
            assert b.stats().failed_execution_count == 1

    run(body)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda items: items[:-1], "returned 1 results for a batch of 2 items"),
        (lambda items: None, "returned NoneType"),
    ],
)
def test_wrong_result_count_fails_every_request_of_the_batch(handler: Callable, message: str) -> None:
    async def body() -> None:
        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=2, max_queue_delay_ms=0, claim_idle=False)) as b:
            outcomes = await asyncio.gather(*spawn(b, ["a", "b"]), return_exceptions=True)
            stats = b.stats()
        assert len(outcomes) == 2
        for outcome in outcomes:
            assert isinstance(outcome, BatchResultError)
            assert message in str(outcome)
        assert stats.failed_execution_count == 1

    run(body)


def test_cancelled_queued_request_is_dropped_and_the_others_are_answered() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            tasks = spawn(b, ["a", "b", "c"])
            await settle()
            tasks[1].cancel()
            await settle()
            assert b.stats().queue_depth == 2
            rec.release.set()
            results = await asyncio.gather(blocker, tasks[0], tasks[2])
            assert tasks[1].cancelled()
            assert b.stats().cancelled_count == 1
        assert results == [("blocker", 0), ("a", 1), ("c", 1)]
        assert rec.batches == [["blocker"], ["a", "c"]]

    run(body)


def test_cancelled_in_flight_request_lets_its_batch_finish_for_the_others() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0, claim_idle=False)) as b:
            tasks = spawn(b, ["a", "b"])
            assert await asyncio.to_thread(rec.entered.wait, LIMIT_S)
            assert b.stats().in_flight == 2
            tasks[0].cancel()
            rec.release.set()
            assert await tasks[1] == ("b", 0)
            with pytest.raises(asyncio.CancelledError):
                await tasks[0]
            assert await b.submit("c") == ("c", 1)
        assert rec.batches == [["a", "b"], ["c"]]

    run(body)


def test_stop_with_drain_finishes_queued_work_and_rejects_new_work() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        b = DynamicBatcher(rec, BatchPolicy(max_batch_size=2, max_queue_delay_ms=1000))
        await b.start()
        blocker = asyncio.create_task(b.submit("blocker"))
        await settle()
        advance(1.0)  # the lone blocker runs once its delay has passed
        assert await asyncio.to_thread(rec.entered.wait, LIMIT_S)
        tasks = spawn(b, ["a", "b", "c"])
        await settle()
        stopping = asyncio.create_task(b.stop(drain=True, grace_s=LIMIT_S))
        await settle()
        assert not b.running
        with pytest.raises(ShuttingDownError):
            await b.submit("too late")
        rec.release.set()
        await stopping
        results = await asyncio.gather(blocker, *tasks)
        assert [item for item, _ in results] == ["blocker", "a", "b", "c"]
        assert now() == 1.0  # the last, partial batch did not wait for the 1 s delay
        assert rec.batches[1:] == [["a", "b"], ["c"]]
        with pytest.raises(RuntimeError, match="cannot be restarted"):
            await b.start()

    run(body)


@pytest.mark.parametrize("drain", [True, False])
def test_stop_fails_what_remains_after_the_grace_period(drain: bool) -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        b = DynamicBatcher(rec, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0))
        await b.start()
        blocker = await occupy(b, rec)
        queued = asyncio.create_task(b.submit("queued"))
        await settle()
        stopping = asyncio.create_task(b.stop(drain=drain, grace_s=0.25))
        await settle()
        assert stopping.done() is not drain  # draining waits for the grace period, not draining does not
        advance(0.25)
        await stopping
        rec.release.set()  # let the executor thread finish its call
        outcomes = await asyncio.gather(blocker, queued, return_exceptions=True)
        assert all(isinstance(o, ShuttingDownError) for o in outcomes)
        assert "queued" not in rec.executed_items

    run(body)


def test_submit_before_start_is_refused() -> None:
    async def body() -> None:
        b = DynamicBatcher(Recorder())
        with pytest.raises(RuntimeError, match="not started"):
            await b.submit(1)

    run(body)


def test_bad_submit_arguments_are_refused_and_leave_nothing_queued() -> None:
    async def body() -> None:
        async with DynamicBatcher(Recorder(), BatchPolicy(max_queue_delay_ms=0)) as b:
            with pytest.raises(TypeError):
                await b.submit(1, key=[224, 224])
            with pytest.raises(InvalidParameterError, match="priority must be an integer"):
                await b.submit(1, priority="high")  # type: ignore[arg-type]
            with pytest.raises(InvalidParameterError, match="timeout_s must be"):
                await b.submit(1, timeout_s=-1)
            assert b.stats().queue_depth == 0
            assert await b.submit(1, key=(224, 224)) == (1, 0)

    run(body)
