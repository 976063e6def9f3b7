"""What a batcher's worker does off the event loop, and how a crashed worker is restarted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from eca_serve.errors import BatchResultError

_log = logging.getLogger(__name__)

FIRST_RESTART_DELAY_S = 0.05
MAX_RESTART_DELAY_S = 5.0
# A fault that survives this many restarts in a row may be caused by what is queued (a request that
# breaks the batcher itself), so the queue is answered with errors rather than fed to it again.
FAIL_QUEUED_AFTER_CRASHES = 3


def call_handler(
    handler: Callable[[list[Any]], Iterable[Any]], items: list[Any], name: str
) -> tuple[list[Any], Exception | None, float]:
    """Run in the executor: the handler's results or exception, and the seconds it took.

    Only ``Exception`` is caught: it belongs to this batch. Anything else (a ``BaseException`` that
    is not an ``Exception``) escapes and ends the worker, which the batcher then restarts.
    """
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


def restart_delay_s(streak: int) -> float:
    """Seconds before restarting a worker after the ``streak``-th crash in a row (>= 1): doubling, capped."""
    return min(FIRST_RESTART_DELAY_S * 2 ** min(streak - 1, 30), MAX_RESTART_DELAY_S)


def log_crash(name: str, slot: int, streak: int, delay_s: float, exc: BaseException) -> None:
    """Log a worker crash: the first of a streak with its traceback, later ones only at streaks 2, 4, 8, ...

    With the capped backoff a worker that crashes forever logs O(log n) lines, not one per restart.
    """
    if streak == 1:
        _log.error("worker %d of batcher %r crashed; restarting it in %.2f s", slot, name, delay_s, exc_info=exc)
    elif streak & (streak - 1) == 0:
        _log.error("worker %d of batcher %r crashed again (%d crashes in a row, last: %r); restarting it in %.2f s",
                   slot, name, streak, exc, delay_s)


def is_stop(exc: BaseException | None) -> bool:
    """True for the exceptions that mean "stop" rather than "crashed": cancellation, exit, Ctrl-C."""
    return isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit))


async def wait_event(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until the event is set or ``timeout_s`` passes, whichever comes first."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except asyncio.TimeoutError:
        pass
