"""The batcher's queue: requests by group key, due order by priority then arrival."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Hashable

from eca_serve.batching.records import PendingRequest


class PendingQueue:
    """Queued requests by group key; per key a heap ordered by (higher priority, earlier arrival).

    ``discard`` only marks a request: dead entries are dropped when they reach the top of their
    heap, or by a rebuild once they outnumber live ones, so memory stays O(queued requests).
    """

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[tuple[int, int, PendingRequest]]] = {}
        self._live: Counter[Hashable] = Counter()
        self._seq = itertools.count()
        self._entries = 0
        self.size = 0

    def push(self, req: PendingRequest) -> None:
        """Queue a request (TypeError for an unhashable key, before anything changes)."""
        heapq.heappush(self._heaps.setdefault(req.key, []), (-req.priority, next(self._seq), req))
        self._live[req.key] += 1
        self._entries += 1
        self.size += 1
        req.queued = True

    def discard(self, req: PendingRequest) -> bool:
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

    def head(self) -> PendingRequest | None:
        """The request due next over all keys: highest priority, then earliest arrival."""
        tops = [top for key in list(self._heaps) if (top := self._top(key)) is not None]
        return min(tops)[2] if tops else None

    def pop(self, key: Hashable, n: int) -> list[PendingRequest]:
        """Remove and return up to ``n`` requests of one key, in due order."""
        out: list[PendingRequest] = []
        while len(out) < n and (top := self._top(key)) is not None:
            heapq.heappop(self._heaps[key])
            self._entries -= 1
            self.discard(top[2])
            out.append(top[2])
        return out

    def pop_all(self) -> list[PendingRequest]:
        """Remove and return every queued request."""
        out: list[PendingRequest] = []
        while (head := self.head()) is not None:
            out += self.pop(head.key, self.size)
        return out

    def _top(self, key: Hashable) -> tuple[int, int, PendingRequest] | None:
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
