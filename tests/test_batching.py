"""Dynamic batcher: real executor threads, a real (recording) handler, an event loop on a manual clock.

Timing rules (delays, timeouts, grace periods) are checked in the loop's own time, which moves only when a
test advances it, so no assertion depends on how fast a busy machine runs.
"""

from __future__ import annotations

import ast
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import eca_serve.batching as batching
from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.errors import (
    ConfigError,
    QueueFullError,
)
from tests.manual_clock import advance
from tests.batching_helpers import LIMIT_S, Recorder, now, occupy, run, settle, spawn


def test_concurrent_submits_are_batched_and_each_caller_gets_its_own_result() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            tasks = spawn(b, list(range(10)))
            await settle()
            rec.release.set()
            results = await asyncio.gather(*tasks)
            assert await blocker == ("blocker", 0)
        assert [item for item, _ in results] == list(range(10))
        assert rec.batches[1:] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert [batch for _, batch in results] == [1] * 4 + [2] * 4 + [3] * 2

    run(body)


def test_many_concurrent_submitters_all_answered_in_fewer_executions() -> None:
    async def body() -> None:
        rec = Recorder(sleep_s=0.002)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=8, max_queue_delay_ms=0)) as b:
            results = await asyncio.gather(*spawn(b, list(range(200))))
            stats = b.stats()
        assert [item for item, _ in results] == list(range(200))
        assert sorted(rec.executed_items) == list(range(200))
        assert stats.execution_count == len(rec.batches) < 200
        assert max(len(batch) for batch in rec.batches) <= 8

    run(body)


def test_zero_delay_runs_a_lone_request_at_once_and_takes_what_is_queued() -> None:
    async def body() -> None:
        rec = Recorder()
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=8, max_queue_delay_ms=0)) as b:
            assert await b.submit("alone") == ("alone", 0)
            await asyncio.gather(*spawn(b, ["a", "b", "c"]))
            assert now() == 0.0  # no timer was needed: nothing waited
        # "a" finds the instance idle and runs at once; "b" and "c" queue behind it and go together
        assert rec.batches == [["alone"], ["a"], ["b", "c"]]

    run(body)


def test_partial_batch_waits_for_the_delay_then_runs_what_joined() -> None:
    async def body() -> None:
        rec = Recorder()
        # claims off: a queue that forms on an idle instance (tests/test_batcher_claim.py covers claims)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=250, claim_idle=False)) as b:
            first = asyncio.create_task(b.submit("first"))
            await settle()
            advance(0.125)
            second = asyncio.create_task(b.submit("second"))
            await settle()
            advance(0.0625)
            await settle()
            stats = b.stats()
            assert (stats.in_flight, stats.execution_count, stats.queue_depth) == (0, 0, 2)  # 0.1875 s: still waiting
            advance(0.0625)  # 0.25 s after the first arrived
            await asyncio.gather(first, second)
            assert now() == 0.25
        assert rec.batches == [["first", "second"]]

    run(body)


def test_full_batch_does_not_wait_for_the_delay() -> None:
    async def body() -> None:
        rec = Recorder()
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=4, max_queue_delay_ms=5000, claim_idle=False)) as b:
            await asyncio.gather(*spawn(b, [1, 2, 3, 4]))
            assert now() == 0.0
        assert rec.batches == [[1, 2, 3, 4]]

    run(body)


def test_group_keys_never_mix() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=8, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            keyed = [((224, 224) if i % 3 == 0 else (320, 320) if i % 3 == 1 else "x", i) for i in range(12)]
            tasks = [asyncio.create_task(b.submit(item, key=item[0])) for item in keyed]
            await settle()
            rec.release.set()
            results = await asyncio.gather(blocker, *tasks)
        assert [item for item, _ in results[1:]] == keyed
        assert len(rec.batches) == 4  # blocker + one batch per key
        for batch in rec.batches[1:]:
            assert len({key for key, _ in batch}) == 1

    run(body)


def test_higher_priority_runs_first_and_fifo_within_a_priority() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        async with DynamicBatcher(rec, BatchPolicy(max_batch_size=2, max_queue_delay_ms=0)) as b:
            blocker = await occupy(b, rec)
            tasks = [asyncio.create_task(b.submit(i, priority=p)) for i, p in enumerate([0, 5, 1, 5, 0])]
            await settle()
            rec.release.set()
            await asyncio.gather(blocker, *tasks)
        assert rec.batches[1:] == [[1, 3], [2, 0], [4]]

    run(body)


def test_full_queue_rejects_immediately_and_queued_work_still_completes() -> None:
    async def body() -> None:
        rec = Recorder(hold_first=True)
        policy = BatchPolicy(max_batch_size=1, max_queue_size=2, max_queue_delay_ms=0)
        async with DynamicBatcher(rec, policy, name="m") as b:
            blocker = await occupy(b, rec)
            tasks = spawn(b, ["q1", "q2"])
            await settle()
            refused = b.submit("q3")
            with pytest.raises(QueueFullError, match="'m' is full"):
                refused.send(None)  # raised before the coroutine's first suspension: refused at once
            assert b.stats().rejected_count == 1
            rec.release.set()
            results = await asyncio.gather(blocker, *tasks)
        assert [item for item, _ in results] == ["blocker", "q1", "q2"]

    run(body)


def test_stats_and_on_batch_hook() -> None:
    async def body() -> None:
        calls: list[tuple[int, list[float], float]] = []
        rec = Recorder(sleep_s=0.02, hold_first=True)
        policy = BatchPolicy(max_batch_size=3, max_queue_delay_ms=0)
        async with DynamicBatcher(rec, policy, on_batch=lambda *a: calls.append(a)) as b:
            blocker = await occupy(b, rec)
            tasks = spawn(b, list(range(5)))
            await settle()
            during = b.stats()
            advance(0.5)  # every queued item waits 0.5 s for the blocker
            rec.release.set()
            await asyncio.gather(blocker, *tasks)
            after = b.stats()
        assert (during.queue_depth, during.in_flight, during.execution_count) == (5, 1, 0)
        assert (after.queue_depth, after.in_flight) == (0, 0)
        assert (after.inference_count, after.execution_count) == (6, 3)
        assert after.batch_size_histogram == {1: 1, 2: 1, 3: 1}
        assert after.compute_time_s >= 3 * 0.02
        assert after.queue_time_s == pytest.approx(5 * 0.5)
        assert [size for size, _, _ in calls] == [1, 3, 2]
        assert all(len(times) == size for size, times, _ in calls)
        assert sum(sum(times) for _, times, _ in calls) == pytest.approx(after.queue_time_s)

    run(body)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1"),
        ({"max_batch_size": 2.0}, "max_batch_size must be an integer"),
        ({"max_queue_size": 0}, "max_queue_size must be an integer >= 1"),
        ({"max_batch_size": 16, "max_queue_size": 8}, "max_queue_size must be >= max_batch_size"),
        ({"max_queue_delay_ms": -1}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"max_queue_delay_ms": float("nan")}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"max_queue_delay_ms": True}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"timeout_s": 0}, "timeout_s must be None or a finite number > 0"),
        ({"instances": 0}, "instances must be an integer >= 1"),
        ({"timeout_s": float("inf")}, "timeout_s must be None or a finite number > 0"),
    ],
)
def test_policy_validation_states_the_rule(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BatchPolicy(**kwargs)


def test_instances_run_batches_at_the_same_time_and_each_answer_stays_its_own() -> None:
    both_running = threading.Barrier(2, timeout=LIMIT_S)
    entered = threading.Event()

    def handler(items: list[int]) -> list[int]:
        entered.set()
        both_running.wait()  # only returns once two batches are inside the handler together
        return [item * 10 for item in items]

    async def body() -> None:
        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, instances=2)) as b:
            first = asyncio.create_task(b.submit(1))
            assert await asyncio.to_thread(entered.wait, LIMIT_S)
            await settle()
            assert b.stats().in_flight == 1 and not first.done()  # waiting at the barrier for a partner
            assert await asyncio.gather(first, b.submit(2)) == [10, 20]
            assert b.stats().in_flight == 0 and b.stats().execution_count == 2

    run(body)


def test_one_instance_never_runs_two_batches_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def handler(items: list[int]) -> list[int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return items

    async def body() -> None:
        async with DynamicBatcher(handler, BatchPolicy(max_batch_size=2, max_queue_delay_ms=0, instances=1)) as b:
            assert await asyncio.gather(*[b.submit(i) for i in range(12)]) == list(range(12))

    run(body)
    assert peak == 1


def test_policy_device_defaults() -> None:
    cpu, cuda = BatchPolicy.for_device("cpu"), BatchPolicy.for_device("cuda:1")
    assert (cpu.max_batch_size, cpu.max_queue_delay_ms, cpu.instances) == (4, 0.0, 2)
    assert cuda.max_batch_size == 32 and 0 < cuda.max_queue_delay_ms <= 5 and cuda.instances == 1
    assert BatchPolicy.for_device("cpu", timeout_s=5.0).timeout_s == 5.0
    assert BatchPolicy(timeout_s=None).timeout_s is None
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        BatchPolicy.for_device("tpu")
    with pytest.raises(ConfigError, match="unknown BatchPolicy fields"):
        BatchPolicy.for_device("cpu", max_delay=1)
    with pytest.raises(ConfigError, match="max_queue_size must be >= max_batch_size"):
        BatchPolicy.for_device("cpu", max_batch_size=128)


def test_batching_imports_nothing_but_the_stdlib_and_eca_serve_leaves() -> None:
    modules = sorted(Path(batching.__file__).parent.glob("*.py"))
    allowed_local = {"eca_serve.errors", "eca_serve.kinds"} | {f"eca_serve.batching.{p.stem}" for p in modules}
    assert len(modules) > 1
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert name in allowed_local or top in sys.stdlib_module_names or top == "__future__", (
                    f"{path.name} imports {name}"
                )
