"""An asyncio dynamic batcher: many concurrent requests in, one synchronous handler call per batch.

It knows nothing about models, tensors or HTTP: items and results are opaque objects, the optional
group key is any hashable (e.g. an input shape) and only items with equal keys share a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from eca_serve.batching.policy import BatchPolicy, check_timeout_s
from eca_serve.errors import (
    BatchResultError,
    ConfigError,
    InvalidParameterError,
    QueueFullError,
    RequestTimeoutError,
    ShuttingDownError,
)

T = TypeVar("T")
R = TypeVar("R")
OnBatch = Callable[[int, list[float], float], None]

_log = logging.getLogger(__name__)


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


@dataclass(eq=False)
class _Request:
    item: Any
    key: Hashable
    priority: int
    future: asyncio.Future[Any]
    enqueued: float
    queued: bool = False
    timer: asyncio.TimerHandle | None = None


class _PendingQueue:
    """Queued requests by group key; per key a heap ordered by (higher priority, earlier arrival).

    ``discard`` only marks a request: dead entries are dropped when they reach the top of their
    heap, or by a rebuild once they outnumber live ones, so memory stays O(queued requests).
    """

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[tuple[int, int, _Request]]] = {}
        self._live: Counter[Hashable] = Counter()
        self._seq = itertools.count()
        self._entries = 0
        self.size = 0

    def push(self, req: _Request) -> None:
        """Queue a request."""
        heapq.heappush(self._heaps.setdefault(req.key, []), (-req.priority, next(self._seq), req))
        self._live[req.key] += 1
        self._entries += 1
        self.size += 1
        req.queued = True

    def discard(self, req: _Request) -> bool:
        """Remove a request if it is queued; returns whether it was."""
        if not req.queued:
            return False
        req.queued = False
        self._live[req.key] -= 1
        self.size -= 1
        if self._entries > 2 * self.size + 64:
            self._rebuild()
        return True

    def count(self, key: Hashable) -> int:
        """Queued requests with this key."""
        return self._live[key]

    def head(self) -> _Request | None:
        """The request due next over all keys: highest priority, then earliest arrival."""
        tops = [top for key in list(self._heaps) if (top := self._top(key)) is not None]
        return min(tops)[2] if tops else None

    def pop(self, key: Hashable, n: int) -> list[_Request]:
        """Remove and return up to ``n`` requests of one key, in due order."""
        out: list[_Request] = []
        while len(out) < n and (top := self._top(key)) is not None:
            heapq.heappop(self._heaps[key])
            self._entries -= 1
            self.discard(top[2])
            out.append(top[2])
        return out

    def _top(self, key: Hashable) -> tuple[int, int, _Request] | None:
        heap = self._heaps.get(key)
        while heap and not heap[0][2].queued:
            heapq.heappop(heap)
            self._entries -= 1
        if heap:
            return heap[0]
        self._heaps.pop(key, None)  # keys can be unbounded (image sizes): forget empty ones
        self._live.pop(key, None)
        return None

    def _rebuild(self) -> None:
        live = {k: [e for e in h if e[2].queued] for k, h in self._heaps.items()}
        self._heaps = {k: h for k, h in live.items() if h}
        for heap in self._heaps.values():
            heapq.heapify(heap)
        self._entries = sum(len(h) for h in self._heaps.values())
        self._live = +self._live  # drops keys counted down to zero


class DynamicBatcher(Generic[T, R]):
    """Collects concurrent ``submit`` calls into batches and runs ``handler`` once per batch.

    The handler is synchronous and runs off the event loop, by default in an executor owned by
    this batcher with one thread per ``policy.instances``: up to that many batches run at the same
    time (so the handler must be thread-safe when ``instances > 1``). Batches form as
    described by ``BatchPolicy``. Every request gets exactly one answer: its result, the
    handler's exception, ``BatchResultError``, ``RequestTimeoutError`` or ``ShuttingDownError``.

    If the handler raises, every request of that batch receives that same exception object (not
    a copy or wrapper), so typed errors such as ``ConfigError`` keep their meaning for the API
    layer; treat it as read-only.

    Args:
        handler: ``handler(items) -> results``, one result per item, in order.
        policy: Batching rules; None uses ``BatchPolicy()``.
        name: Name used in error messages, logs and the executor's thread name.
        executor: Executor to run the handler in (not shut down by the batcher); None creates
            a dedicated one with ``policy.instances`` threads.
        on_batch: Called on the event loop after each handler call with
            ``(batch_size, queue_times_s, compute_time_s)``; its exceptions are logged and ignored.
    """

    def __init__(
        self,
        handler: Callable[[list[T]], Iterable[R]],
        policy: BatchPolicy | None = None,
        *,
        name: str = "",
        executor: Executor | None = None,
        on_batch: OnBatch | None = None,
    ) -> None:
        self._handler = handler
        self._policy = policy if policy is not None else BatchPolicy()
        self._name = name
        self._executor = executor
        self._owns_executor = executor is None
        self._on_batch = on_batch
        self._queue = _PendingQueue()
        self._wakeup = asyncio.Event()
        self._stats = BatcherStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def name(self) -> str:
        """Name given at construction."""
        return self._name

    @property
    def policy(self) -> BatchPolicy:
        """Batching rules in force."""
        return self._policy

    @property
    def running(self) -> bool:
        """True between ``start()`` and the beginning of ``stop()``."""
        return bool(self._workers) and not self._closing

    def stats(self) -> BatcherStats:
        """A snapshot of the counters, queue depth and in-flight count."""
        return dataclasses.replace(
            self._stats,
            batch_size_histogram=dict(sorted(self._stats.batch_size_histogram.items())),
            queue_depth=self._queue.size,
        )

    async def start(self) -> None:
        """Start the worker on the running loop; a no-op if running.

        Raises:
            RuntimeError: If the batcher was stopped (it cannot restart).
        """
        if self._closing:
            raise RuntimeError(f"batcher {self._name!r} was stopped and cannot be restarted")
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        instances = self._policy.instances
        if self._executor is None:
            self._executor = ThreadPoolExecutor(instances, thread_name_prefix=f"batcher-{self._name}")
        self._workers = [self._loop.create_task(self._run(), name=f"batcher-{self._name}-{i}") for i in range(instances)]

    async def stop(self, *, drain: bool = True, grace_s: float = 30.0) -> None:
        """Stop accepting requests, then finish or fail the rest; safe to call twice.

        New submits raise ``ShuttingDownError`` from the moment this is called.

        Args:
            drain: True runs queued and in-flight work (queued batches no longer wait for the
                delay) for up to ``grace_s``; False fails it at once, as ``grace_s=0`` would.
            grace_s: Seconds allowed for draining. What remains afterwards, including the
                running batch, gets ``ShuttingDownError``; its handler call is left to finish in
                its thread, which cannot be interrupted.
        """
        self._closing = True
        workers = self._workers
        if workers:
            self._wakeup.set()
            if drain and grace_s > 0:
                await asyncio.wait(workers, timeout=grace_s)
            for worker in workers:
                if not worker.done():
                    worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        self._fail_queued()
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> DynamicBatcher[T, R]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(drain=True)

    async def submit(
        self, item: T, *, key: Hashable = None, timeout_s: float | None = None, priority: int = 0
    ) -> R:
        """Queue one item and wait for its result.

        Args:
            item: Passed to the handler inside a list with other items of the same key.
            key: Group key; only items with equal keys are batched together. Must be hashable
                (a tuple shape, not a list), else TypeError.
            timeout_s: Limit on queue time plus execution; None uses the policy's ``timeout_s``.
            priority: Higher runs first; equal priorities run in arrival order.

        Returns:
            The handler's result for this item.

        Raises:
            QueueFullError: At once, when ``max_queue_size`` requests are queued.
            RequestTimeoutError: When the limit passes; a request still queued is never run.
            ShuttingDownError: When the batcher is stopping or stopped.
            BatchResultError: When the handler returned a wrong number of results.
            RuntimeError: When the batcher was never started or runs on another event loop.
            Exception: Whatever the handler raised for this item's batch.
        """
        self._check_accepting(timeout_s, priority)
        self.check_room()
        return await self._enqueue(item, key, priority, timeout_s).future

    def check_room(self, n: int = 1) -> None:
        """Raise ``QueueFullError`` now unless ``n`` more requests fit in the queue.

        ``submit`` checks this itself; callers with costly work before their submit (decoding an
        upload) call it first, so that a flood is refused before it is paid for.
        """
        if self._queue.size + n > self._policy.max_queue_size:
            self._stats.rejected_count += 1
            raise QueueFullError(
                f"queue of batcher {self._name!r} is full "
                f"({self._policy.max_queue_size} requests waiting); retry later"
            )

    def _check_accepting(self, timeout_s: float | None, priority: int) -> None:
        if self._closing:
            raise ShuttingDownError(f"batcher {self._name!r} is shutting down; request refused")
        if not self._workers or asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(f"batcher {self._name!r} is not started on this event loop")
        try:
            check_timeout_s(timeout_s)
        except ConfigError as exc:
            raise InvalidParameterError(str(exc)) from None
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidParameterError(f"priority must be an integer, got {priority!r}")

    def _enqueue(self, item: T, key: Hashable, priority: int, timeout_s: float | None) -> _Request:
        loop = asyncio.get_running_loop()
        req = _Request(item, key, priority, loop.create_future(), loop.time())
        self._queue.push(req)  # first: an unhashable key raises TypeError before anything is armed
        limit = self._policy.timeout_s if timeout_s is None else timeout_s
        if limit is not None:
            req.timer = loop.call_at(req.enqueued + limit, self._expire, req, limit)
        req.future.add_done_callback(lambda _: self._on_done(req))
        self._wakeup.set()
        return req

    def _expire(self, req: _Request, limit: float) -> None:
        if req.future.done():
            return
        where = "queued" if self._queue.discard(req) else "running"
        self._stats.timeout_count += 1
        req.future.set_exception(
            RequestTimeoutError(f"request to batcher {self._name!r} timed out after {limit:g} s ({where})")
        )

    def _on_done(self, req: _Request) -> None:
        if req.timer is not None:
            req.timer.cancel()
        self._queue.discard(req)  # a caller that gave up before its batch formed
        if req.future.cancelled():
            self._stats.cancelled_count += 1

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                await self._execute(batch)
        except Exception:
            _log.exception("worker of batcher %r crashed", self._name)
        finally:
            self._closing = True
            self._fail_queued()

    async def _next_batch(self) -> list[_Request] | None:
        """Wait for the next batch due by the policy; None once stopping and empty."""
        while True:
            self._wakeup.clear()
            head = self._queue.head()
            if head is None:
                if self._closing:
                    return None
                await self._wakeup.wait()
                continue
            wait_s = self._fill_wait_s(head)
            if wait_s > 0:
                await _wait_event(self._wakeup, wait_s)
                continue
            # a caller cancelled in this loop tick is still queued until its callback runs
            taken = self._queue.pop(head.key, self._policy.max_batch_size)
            batch = [r for r in taken if not r.future.done()]
            if batch:
                return batch

    def _fill_wait_s(self, head: _Request) -> float:
        """Seconds to wait for a fuller batch: > 0 only while a full batch cannot form."""
        if self._closing or self._queue.count(head.key) >= self._policy.max_batch_size:
            return 0.0
        if self._policy.max_queue_delay_ms == 0:
            return 0.0
        return head.enqueued + self._policy.max_queue_delay_s - asyncio.get_running_loop().time()

    async def _execute(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        queue_times = [loop.time() - r.enqueued for r in batch]
        self._stats.in_flight += len(batch)
        items = [r.item for r in batch]
        try:
            results, error, compute_s = await loop.run_in_executor(
                self._executor, _call_handler, self._handler, items, self._name
            )
        except BaseException as exc:
            stopping = isinstance(exc, asyncio.CancelledError)
            _resolve(batch, [], self._shutdown_error() if stopping else exc)
            raise
        finally:
            self._stats.in_flight -= len(batch)
        _resolve(batch, results, error)
        self._record(queue_times, compute_s, failed=error is not None)

    def _record(self, queue_times: list[float], compute_s: float, *, failed: bool) -> None:
        stats, size = self._stats, len(queue_times)
        stats.execution_count += 1
        stats.inference_count += size
        stats.failed_execution_count += int(failed)
        stats.batch_size_histogram[size] = stats.batch_size_histogram.get(size, 0) + 1
        stats.queue_time_s += sum(queue_times)
        stats.compute_time_s += compute_s
        if self._on_batch is not None:
            try:
                self._on_batch(size, queue_times, compute_s)
            except Exception:  # a metrics hook must not take the model down
                _log.exception("on_batch hook of batcher %r failed", self._name)

    def _fail_queued(self) -> None:
        while (head := self._queue.head()) is not None:
            _resolve(self._queue.pop(head.key, self._queue.size), [], self._shutdown_error())

    def _shutdown_error(self) -> ShuttingDownError:
        return ShuttingDownError(f"batcher {self._name!r} shut down before the request finished")


def _call_handler(
    handler: Callable[[list[Any]], Iterable[Any]], items: list[Any], name: str
) -> tuple[list[Any], Exception | None, float]:
    """Run in the executor: the handler's results or exception, and the seconds it took."""
    start = time.perf_counter()
    try:
        raw = handler(items)
        try:
            results = list(raw)
        except TypeError as exc:
            raise BatchResultError(
                f"handler of batcher {name!r} returned {type(raw).__name__}, not {len(items)} results"
            ) from exc
        if len(results) != len(items):
            raise BatchResultError(
                f"handler of batcher {name!r} returned {len(results)} results for a batch of "
                f"{len(items)} items; it must return exactly one result per item, in order"
            )
    except Exception as exc:
        return [], exc, time.perf_counter() - start
    return results, None, time.perf_counter() - start


def _resolve(batch: list[_Request], results: list[Any], error: BaseException | None) -> None:
    """Answer every request of a batch still awaited: all with ``error``, else each its result."""
    for i, req in enumerate(batch):
        if req.future.done():
            continue
        if error is not None:
            req.future.set_exception(error)
        else:
            req.future.set_result(results[i])


async def _wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until the event is set or ``timeout_s`` passes, whichever comes first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass
