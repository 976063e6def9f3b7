"""An asyncio event loop whose clock moves only when a test says so, for timing rules without wall-clock asserts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class ManualClockLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` starts at 0 and changes only through `advance`; timers fire in that time.

    Everything else is real: I/O and executor threads still wake the loop when they finish, so a
    handler running in a thread is awaited as usual while no timer can fire on its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward; timers now due run at the loop's next turn."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds}")
        self._now += seconds


def advance(seconds: float) -> None:
    """Advance the running `ManualClockLoop`."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, ManualClockLoop):
        raise TypeError("advance() needs a ManualClockLoop (run the test with run_with_manual_clock)")
    loop.advance(seconds)


def run_with_manual_clock(test: Callable[[], Coroutine[Any, Any, None]], limit_s: float = 10.0) -> None:
    """Run an async test body on a fresh `ManualClockLoop`; it is cancelled after ``limit_s`` real seconds.

    The limit is real time (a thread), since no timer of the loop fires unless the test advances it.
    """

    async def guarded() -> None:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        guard = threading.Timer(limit_s, loop.call_soon_threadsafe, (task.cancel,))
        guard.start()
        try:
            await test()
        finally:
            guard.cancel()

    with asyncio.Runner(loop_factory=ManualClockLoop) as runner:
        runner.run(guarded())
