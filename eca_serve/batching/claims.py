"""Request records (timeouts, cancellation) and claims: a submit that finds an instance idle and nothing queued runs its item at once.

A lone request on an idle batcher would otherwise wake a worker task (one event-loop hop), go
through the queue and, with ``max_queue_delay_ms > 0``, wait for companions that are not coming.
A claim takes an idle instance slot instead and hands ``[item]`` to the executor from the
submitter's own call; that slot's worker task waits until the run ends. Accounting stays the
batcher's: timeouts, cancellation, stats, ``on_batch`` and crash handling are the same as for a
batch its worker runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor
from typing import Any

from eca_serve.batching.policy import BatchPolicy
from eca_serve.batching.queue import PendingQueue
from eca_serve.batching.records import BatcherStats, PendingRequest, resolve
from eca_serve.batching.worker import call_handler
from eca_serve.errors import NotReadyError, RequestTimeoutError, ShuttingDownError


class IdleClaims:
    """The claim path of `DynamicBatcher` (a mixin over its state; see the module docstring)."""

    _handler: Callable[[list[Any]], Iterable[Any]]
    _policy: BatchPolicy
    _name: str
    _executor: Executor | None
    _queue: PendingQueue
    _wakeup: asyncio.Event
    _stats: BatcherStats
    _loop: asyncio.AbstractEventLoop | None
    _workers: list[asyncio.Task[None]]
    _busy: set[int]
    _claims: dict[asyncio.Future[Any], tuple[int, PendingRequest]]
    _closing: bool

    def _check_accepting(self, timeout_s: float | None, priority: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _record(self, queue_times: list[float], compute_s: float, *, failed: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _crashed(self, slot: int, exc: BaseException) -> None:  # pragma: no cover
        raise NotImplementedError

    def _shutdown_error(self) -> ShuttingDownError:  # pragma: no cover
        raise NotImplementedError

    def _crash_error(self) -> NotReadyError:  # pragma: no cover
        raise NotImplementedError

    def _request(self, item: Any, key: Hashable, priority: int) -> PendingRequest:
        loop = asyncio.get_running_loop()
        return PendingRequest(item, key, priority, loop.create_future(), loop.time())

    def _arm(self, req: PendingRequest, timeout_s: float | None) -> None:
        limit = self._policy.timeout_s if timeout_s is None else timeout_s
        if limit is not None:
            req.timer = asyncio.get_running_loop().call_at(req.enqueued + limit, self._expire, req, limit)
        req.future.add_done_callback(lambda _: self._on_done(req))

    def _idle_slot(self) -> int | None:
        """An instance slot free to run a batch now, if nothing is queued (else None: queue as usual).

        Nothing queued means no request is due before this one, so running it at once keeps the
        order; it skips the worker's wake-up and the batch-collection wait (``max_queue_delay_ms``).
        """
        if self._queue.size or not self._policy.claim_idle:
            return None
        return next((s for s in range(len(self._workers)) if s not in self._busy), None)

    def try_claim(self, prepare: Callable[[], Any], *, timeout_s: float | None = None,
                  priority: int = 0) -> asyncio.Future[Any] | None:
        """Claim an idle instance for ``prepare()``'s item: one executor call runs both, one thread hop in all.

        For a caller whose item itself costs work off the loop (decoding an upload): when an instance
        is idle and nothing is queued, ``prepare`` and then the handler on ``[its item]`` run in one
        call of this batcher's executor, instead of a hop to another pool for ``prepare`` and a second
        one for the batch. ``prepare``'s exception answers this request only and counts as no batch.

        Returns:
            The future of the item's result, or None when no instance is idle or something is queued
            (then ``prepare`` did not run: prepare the item and ``submit`` it as usual).

        Raises:
            The refusals of ``submit`` (stopping, restarting, bad timeout or priority).
        """
        self._check_accepting(timeout_s, priority)
        slot = self._idle_slot()
        if slot is None:
            return None
        return self._claim(slot, None, None, priority, timeout_s, prepare).future

    def _claim(self, slot: int, item: Any, key: Hashable, priority: int, timeout_s: float | None,
               prepare: Callable[[], Any] | None = None) -> PendingRequest:
        """Run ``[item]`` (or ``[prepare()]``) as a batch of one on ``slot`` now; its worker waits until the run ends."""
        hash(key)  # an unhashable key is refused here too, before anything runs
        req = self._request(item, key, priority)
        self._arm(req, timeout_s)
        self._busy.add(slot)
        self._stats.claimed_count += 1
        self._stats.in_flight += 1
        assert self._loop is not None
        if prepare is None:
            run = self._loop.run_in_executor(self._executor, call_handler, self._handler, [item], self._name)
        else:
            run = self._loop.run_in_executor(self._executor, _prepare_and_call, prepare, self._handler, self._name,
                                             req.future.done)
        self._claims[run] = (slot, req)
        run.add_done_callback(self._claim_done)
        return req

    def _claim_done(self, run: asyncio.Future[Any]) -> None:
        slot, req = self._claims.pop(run)
        self._stats.in_flight -= 1
        self._busy.discard(slot)
        self._wakeup.set()
        if run.cancelled():  # the executor was shut down under it
            resolve([req], [], self._shutdown_error())
            return
        fault = run.exception()
        if fault is None:
            results, error, compute_s = run.result()
            resolve([req], results, error)
            if compute_s is None:  # prepare() failed: an answer for this request, no batch ran
                return
            try:
                self._record([0.0], compute_s, failed=error is not None)
            except BaseException as exc:  # noqa: BLE001 - on the loop: a fault ends the slot, as in a worker
                fault = exc
        if fault is not None:
            resolve([req], [], self._shutdown_error() if self._closing else self._crash_error())
            if not self._closing:
                self._workers[slot].cancel()  # its replacement starts after the backoff, as for a crash
                self._crashed(slot, fault)

    def _expire(self, req: PendingRequest, limit: float) -> None:
        if req.future.done():
            return
        where = "queued" if self._queue.discard(req) else "running"
        self._stats.timeout_count += 1
        req.future.set_exception(
            RequestTimeoutError(f"request to batcher {self._name!r} timed out after {limit:g} s ({where})")
        )

    def _on_done(self, req: PendingRequest) -> None:
        if req.timer is not None:
            req.timer.cancel()
        self._queue.discard(req)  # a caller that gave up before its batch formed
        if req.future.cancelled():
            self._stats.cancelled_count += 1



def _prepare_and_call(prepare: Callable[[], Any], handler: Callable[[list[Any]], Iterable[Any]], name: str,
                      given_up: Callable[[], bool]) -> tuple[list[Any], Exception | None, float | None]:
    """In the executor: ``call_handler`` on ``[prepare()]``; a failing ``prepare`` gives its error and None seconds.

    ``given_up()`` is asked before the decode and again before the inference: a request whose caller
    left (a client that disconnected, a timeout) meanwhile runs neither, and counts as no batch (None
    seconds). It reads the request future's state from this thread; a stale answer costs at most
    the work it would have saved.
    """
    if given_up():
        return [], None, None
    try:
        item = prepare()
    except Exception as exc:  # noqa: BLE001 - the request's own error (e.g. a corrupt upload), answered to it
        return [], exc, None
    if given_up():
        return [], None, None
    return call_handler(handler, [item], name)
