"""An asyncio dynamic batcher: many concurrent requests in, one synchronous handler call per batch.

It knows nothing about models, tensors or HTTP: items and results are opaque objects, the optional
group key is any hashable (e.g. an input shape) and only items with equal keys share a batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from eca_serve.batching.claims import IdleClaims
from eca_serve.batching.policy import BatchPolicy, check_timeout_s
from eca_serve.batching.queue import PendingQueue
from eca_serve.batching.records import BatcherStats, PendingRequest, resolve
from eca_serve.batching.worker import (
    FAIL_QUEUED_AFTER_CRASHES,
    call_handler,
    is_stop,
    log_crash,
    restart_delay_s,
    wait_event,
)
from eca_serve.errors import (
    ConfigError,
    InvalidParameterError,
    NotReadyError,
    QueueFullError,
    ShuttingDownError,
)

T = TypeVar("T")
R = TypeVar("R")
OnBatch = Callable[[int, list[float], float], None]
HealthListener = Callable[[bool], None]

_log = logging.getLogger(__name__)


class DynamicBatcher(IdleClaims, Generic[T, R]):
    """Collects concurrent ``submit`` calls into batches and runs ``handler`` once per batch.

    The handler is synchronous and runs off the event loop, by default in an executor owned by
    this batcher with one thread per ``policy.instances``: up to that many batches run at the same
    time (so the handler must be thread-safe when ``instances > 1``). Batches form as
    described by ``BatchPolicy``. Every request gets exactly one answer: its result, the
    handler's exception, ``BatchResultError``, ``RequestTimeoutError``, ``NotReadyError`` or
    ``ShuttingDownError``. All waiting uses the event loop's clock (``loop.time()``).

    If the handler raises an ``Exception``, every request of that batch receives that same
    exception object (not a copy or wrapper), so typed errors such as ``ConfigError`` keep their
    meaning for the API layer; treat it as read-only.

    A worker that ends with any other exception (a ``BaseException`` from the handler or
    ``on_batch``, or a bug) has crashed: its batch gets ``NotReadyError``, the batcher is not
    ``healthy`` and refuses submits with ``NotReadyError`` until the worker is restarted, after
    a backoff of 0.05 s doubling per crash in a row up to 5 s. Queued requests stay queued for the
    restarted worker (or another instance) unless the worker crashed three times in a row.

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
        self._queue = PendingQueue()
        self._wakeup = asyncio.Event()
        self._stats = BatcherStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._down: dict[int, asyncio.TimerHandle] = {}  # crashed worker slot -> its pending restart
        self._crash_streak = 0
        self._busy: set[int] = set()  # instance slots running a batch, by their worker or by a claim
        self._claims: dict[asyncio.Future[Any], tuple[int, PendingRequest]] = {}  # run -> (slot, request)
        self._listeners: list[HealthListener] = []
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

    @property
    def healthy(self) -> bool:
        """True while running with every worker alive (False while a crashed one awaits its restart)."""
        return self.running and not self._down

    def watch(self, listener: HealthListener) -> None:
        """Call ``listener(healthy)`` on the event loop when a worker crashes (False) or all are back (True).

        The listener's exceptions are logged and ignored.
        """
        self._listeners.append(listener)

    def stats(self) -> BatcherStats:
        """A snapshot of the counters, queue depth and in-flight count."""
        return dataclasses.replace(
            self._stats,
            batch_size_histogram=dict(sorted(self._stats.batch_size_histogram.items())),
            queue_depth=self._queue.size,
        )

    async def start(self) -> None:
        """Start the workers on the running loop; a no-op if running.

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
        self._workers = [self._spawn(slot) for slot in range(instances)]

    async def stop(self, *, drain: bool = True, grace_s: float = 30.0) -> None:
        """Stop accepting requests, then finish or fail the rest; safe to call twice.

        New submits raise ``ShuttingDownError`` from the moment this is called; crashed workers
        are not restarted.

        Args:
            drain: True runs queued and in-flight work (queued batches no longer wait for the
                delay) for up to ``grace_s``; False fails it at once, as ``grace_s=0`` would.
            grace_s: Seconds allowed for draining. What remains afterwards, including the
                running batch, gets ``ShuttingDownError``; its handler call is left to finish in
                its thread, which cannot be interrupted.
        """
        self._closing = True
        for restart in self._down.values():
            restart.cancel()
        workers = self._workers
        if workers:
            self._wakeup.set()
            if drain and grace_s > 0:
                await asyncio.wait([*workers, *self._claims], timeout=grace_s)
            for worker in workers:
                if not worker.done():
                    worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        resolve([req for _, req in self._claims.values()], [], self._shutdown_error())
        self._fail_queued(self._shutdown_error())
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
            NotReadyError: At once while a crashed worker awaits its restart; later if the
                worker crashes while running this item's batch.
            RequestTimeoutError: When the limit passes; a request still queued is never run.
            ShuttingDownError: When the batcher is stopping or stopped.
            BatchResultError: When the handler returned a wrong number of results.
            RuntimeError: When the batcher was never started or runs on another event loop.
            Exception: Whatever the handler raised for this item's batch.
        """
        self._check_accepting(timeout_s, priority)
        if (slot := self._idle_slot()) is not None:
            return await self._claim(slot, item, key, priority, timeout_s).future
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
        if self._down:
            raise NotReadyError(f"batcher {self._name!r} is restarting a crashed worker; retry shortly")
        try:
            check_timeout_s(timeout_s)
        except ConfigError as exc:
            raise InvalidParameterError(str(exc)) from None
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidParameterError(f"priority must be an integer, got {priority!r}")

    def _enqueue(self, item: T, key: Hashable, priority: int, timeout_s: float | None) -> PendingRequest:
        req = self._request(item, key, priority)
        self._queue.push(req)  # first: an unhashable key raises TypeError before anything is armed
        self._arm(req, timeout_s)
        self._wakeup.set()
        return req

    # --- workers: one task per instance slot, restarted after a crash --------------------------------

    def _spawn(self, slot: int) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._run(slot), name=f"batcher-{self._name}-{slot}")
        task.add_done_callback(functools.partial(self._on_worker_exit, slot))
        return task

    async def _run(self, slot: int) -> None:
        while (batch := await self._next_batch(slot)) is not None:
            self._busy.add(slot)
            try:
                await self._execute(batch)
            except BaseException:
                resolve(batch, [], self._shutdown_error() if self._closing else self._crash_error())
                raise
            finally:
                self._busy.discard(slot)
            self._crash_streak = 0

    def _on_worker_exit(self, slot: int, task: asyncio.Task[None]) -> None:
        """Done callback of a worker task: a worker that ended while the batcher runs has crashed."""
        exc = None if task.cancelled() else task.exception()
        if self._closing or is_stop(exc) or task.cancelled():
            if exc is not None and not is_stop(exc):
                _log.error("worker %d of batcher %r failed while stopping", slot, self._name, exc_info=exc)
            return
        self._crashed(slot, exc or RuntimeError("worker returned"))

    def _crashed(self, slot: int, exc: BaseException) -> None:
        self._crash_streak += 1
        self._stats.worker_crash_count += 1
        delay = restart_delay_s(self._crash_streak)
        log_crash(self._name, slot, self._crash_streak, delay, exc)
        was_healthy = not self._down
        self._down[slot] = asyncio.get_running_loop().call_later(delay, self._restart, slot)
        if self._crash_streak >= FAIL_QUEUED_AFTER_CRASHES:
            self._fail_queued(self._crash_error())
        if was_healthy:
            self._notify(False)

    def _restart(self, slot: int) -> None:
        if self._closing or self._down.pop(slot, None) is None:
            return
        self._workers[slot] = self._spawn(slot)
        _log.info("worker %d of batcher %r restarted", slot, self._name)
        if not self._down:
            self._wakeup.set()
            self._notify(True)

    def _notify(self, healthy: bool) -> None:
        for listener in self._listeners:
            try:
                listener(healthy)
            except Exception:  # a watcher must not take the batcher down
                _log.exception("health listener of batcher %r failed", self._name)

    # --- batches ----------------------------------------------------------------------------------

    async def _next_batch(self, slot: int) -> list[PendingRequest] | None:
        """Wait for the next batch due by the policy; None once stopping and empty.

        While a claim runs on this worker's slot, the worker only waits (its instance is busy).
        """
        while True:
            self._wakeup.clear()
            head = self._queue.head()
            if head is None or slot in self._busy:
                if head is None and self._closing:
                    return None
                await self._wakeup.wait()
                continue
            wait_s = self._fill_wait_s(head)
            if wait_s > 0:
                self._stats.fill_wait_count += 1
                await wait_event(self._wakeup, wait_s)
                continue
            # a caller cancelled in this loop tick is still queued until its callback runs
            taken = self._queue.pop(head.key, self._policy.max_batch_size)
            batch = [r for r in taken if not r.future.done()]
            if batch:
                return batch

    def _fill_wait_s(self, head: PendingRequest) -> float:
        """Seconds to wait for a fuller batch: > 0 only while a full batch cannot form."""
        if self._closing or self._queue.count(head.key) >= self._policy.max_batch_size:
            return 0.0
        if self._policy.max_queue_delay_ms == 0:
            return 0.0
        return head.enqueued + self._policy.max_queue_delay_s - asyncio.get_running_loop().time()

    async def _execute(self, batch: list[PendingRequest]) -> None:
        loop = asyncio.get_running_loop()
        queue_times = [loop.time() - r.enqueued for r in batch]
        self._stats.in_flight += len(batch)
        try:
            results, error, compute_s = await loop.run_in_executor(
                self._executor, call_handler, self._handler, [r.item for r in batch], self._name
            )
        finally:
            self._stats.in_flight -= len(batch)
        resolve(batch, results, error)
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

    def _fail_queued(self, error: BaseException) -> None:
        resolve(self._queue.pop_all(), [], error)

    def _shutdown_error(self) -> ShuttingDownError:
        return ShuttingDownError(f"batcher {self._name!r} shut down before the request finished")

    def _crash_error(self) -> NotReadyError:
        return NotReadyError(f"a worker of batcher {self._name!r} crashed before the request finished; retry shortly")
