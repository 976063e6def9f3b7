"""A recording batch handler and manual-clock helpers for the dynamic batcher tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any


from eca_serve.batching import DynamicBatcher
from tests.manual_clock import run_with_manual_clock

# Generous bound: a hung batcher fails the test instead of the whole run.
LIMIT_S = 5.0


class Recorder:
    """Handler answering ``(item, batch_index)`` per item and recording every batch it ran.

    With ``hold_first`` the first call blocks until ``release`` is set, which keeps the worker
    busy while a test fills the queue.
    """

    def __init__(self, sleep_s: float = 0.0, hold_first: bool = False, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.sleep_s = sleep_s
        self.hold_first = hold_first
        self.fail_on = fail_on
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[tuple[Any, int]]:
        with self._lock:
            index = len(self.batches)
            self.batches.append(list(items))
        self.entered.set()
        if self.hold_first and index == 0:
            self.release.wait(LIMIT_S)
        time.sleep(self.sleep_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot handle {self.fail_on!r}")
        return [(item, index) for item in items]

    @property
    def executed_items(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test body on a fresh manual-clock loop, failing rather than hanging."""
    run_with_manual_clock(test, LIMIT_S * 2)


def now() -> float:
    """The event loop's (manual) clock."""
    return asyncio.get_running_loop().time()


async def settle() -> None:
    """Let every ready task run (submit tasks enqueue before their first real suspension)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def occupy(batcher: DynamicBatcher, rec: Recorder) -> asyncio.Task:
    """Submit a blocker and return once the handler is running it (so later items queue up)."""
    task = asyncio.create_task(batcher.submit("blocker"))
    assert await asyncio.to_thread(rec.entered.wait, LIMIT_S)
    return task


def spawn(batcher: DynamicBatcher, items: list[Any], **kwargs: Any) -> list[asyncio.Task]:
    return [asyncio.create_task(batcher.submit(item, **kwargs)) for item in items]
