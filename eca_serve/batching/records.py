"""The records a batcher keeps: one per queued request, and its counters."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BatcherStats:
    """Counters of one batcher; ``DynamicBatcher.stats()`` returns a copy.

    Attributes:
        inference_count: Items handed to the handler (failed batches included).
        execution_count: Handler calls, i.e. batches.
        failed_execution_count: Batches whose handler raised or returned a wrong result count.
        batch_size_histogram: Batch size -> number of batches of that size.
        queue_depth: Requests waiting in the queue now.
        in_flight: Items in the batches running now.
        queue_time_s: Total seconds items waited between submit and the start of their batch.
        compute_time_s: Total seconds spent in handler calls (measured in the handler's thread).
        rejected_count: Submits refused because the queue was full.
        timeout_count: Requests that timed out, queued or running.
        cancelled_count: Requests whose caller gave up (cancelled the awaiting task).
        worker_crash_count: Worker tasks that ended with an exception and were restarted.
        claimed_count: Requests run at once on an idle instance by their own submit (batches of one).
        fill_wait_count: Times a worker waited for a fuller batch (``max_queue_delay_ms``).
    """

    inference_count: int = 0
    execution_count: int = 0
    failed_execution_count: int = 0
    batch_size_histogram: dict[int, int] = field(default_factory=dict)
    queue_depth: int = 0
    in_flight: int = 0
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0
    rejected_count: int = 0
    timeout_count: int = 0
    cancelled_count: int = 0
    worker_crash_count: int = 0
    claimed_count: int = 0
    fill_wait_count: int = 0


@dataclass(eq=False)
class PendingRequest:
    """One submitted item and the future its caller awaits.

    Attributes:
        item: The caller's item, handed to the handler unchanged.
        key: Group key; only equal keys share a batch.
        priority: Higher runs first.
        future: Resolved exactly once: the item's result or an exception.
        enqueued: Event-loop time of the submit, in seconds.
        queued: True while the request sits in the queue.
        timer: The armed timeout, if any.
    """

    item: Any
    key: Hashable
    priority: int
    future: asyncio.Future[Any]
    enqueued: float
    queued: bool = False
    timer: asyncio.TimerHandle | None = None


def resolve(batch: list[PendingRequest], results: list[Any], error: BaseException | None) -> None:
    """Answer every request of a batch still awaited: all with ``error``, else each its result."""
    for i, req in enumerate(batch):
        if req.future.done():
            continue
        if error is not None:
            req.future.set_exception(error)
        else:
            req.future.set_result(results[i])
