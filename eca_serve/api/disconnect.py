"""Noticing, while a request is served, that its HTTP client went away (ASGI ``http.disconnect``).

Once the app has read the whole body, nothing else would call ``receive`` until the answer is sent,
so a client that hangs up would still be queued and inferred. `DisconnectWatch` keeps one ``receive``
pending from then on and calls ``on_disconnect`` when it yields ``http.disconnect`` before the answer
has started; the caller cancels the request's task, which takes its rows out of the batch queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import Message, Receive


class DisconnectWatch:
    """A ``receive`` for the app that also watches for the client's disconnect after the body.

    Args:
        receive: The server's ``receive``.
        on_disconnect: Called once, on the event loop, when the client leaves before ``answered()``.
    """

    def __init__(self, receive: Receive, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._pending: asyncio.Future[Message] | None = None
        self._answered = False
        self.disconnected = False

    def answered(self) -> None:
        """The answer has started: a disconnect from now on is the normal end of the exchange."""
        self._answered = True

    async def receive(self) -> Message:
        if self._pending is not None:  # the app asks again after the body: it shares the watcher's receive
            return await asyncio.shield(self._pending)
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif message["type"] == "http.request" and not message.get("more_body", False):
            self._pending = asyncio.ensure_future(self._watch())
        return message

    def close(self) -> None:
        """Stop watching (the request is over)."""
        if self._pending is None:
            return
        if not self._pending.done():
            self._pending.cancel()
        elif not self._pending.cancelled():
            self._pending.exception()  # a failed receive nobody asked for again: retrieved, not logged at exit

    async def _watch(self) -> Message:
        # Acting in the watching task itself, not in a done callback, cancels one loop iteration sooner:
        # on a busy loop that is when a claimed request's executor thread checks whether to infer.
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self._answered:
            self.disconnected = True
            self._on_disconnect()
        return message
