"""Admission per model: how many requests of one model the server holds at once, decided before any work.

A request is admitted (counted) when it arrives and released when it is answered; one more than the
model's limit is refused at once, before its body is read or decoded, so that a flood costs the server
only the refusal. Pure bookkeeping on the event loop: no locks, no HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

CANCEL_REASONS = ("disconnect", "deadline", "timeout")  # the fixed label set of cancelled requests
LimitOf = Callable[[str], "int | None"]


class Admission:
    """In-flight counters by model name, each bounded by ``limit_of(name)``.

    Args:
        limit_of: The limit of a model, or None for a name that is not served (not counted: such a
            request is answered 404 without work).
    """

    def __init__(self, limit_of: LimitOf) -> None:
        self._limit_of = limit_of
        self._admitted: dict[str, int] = {}

    def try_admit(self, name: str) -> bool | None:
        """Count one request of ``name``: True if admitted, False if at the limit, None if not served."""
        limit = self._limit_of(name)
        if limit is None:
            return None
        held = self._admitted.get(name, 0)
        if held >= limit:
            return False
        self._admitted[name] = held + 1
        return True

    def release(self, name: str) -> None:
        """One admitted request of ``name`` was answered (or abandoned)."""
        held = self._admitted.get(name, 0) - 1
        if held > 0:
            self._admitted[name] = held
        else:
            self._admitted.pop(name, None)

    def admitted(self, name: str) -> int:
        """Requests of ``name`` held now."""
        return self._admitted.get(name, 0)

    def limit(self, name: str) -> int | None:
        """The limit of ``name`` (None if not served)."""
        return self._limit_of(name)

    def refusal(self, name: str) -> str:
        """Why a request of ``name`` at its limit is refused: the one message of HTTP 503 and gRPC."""
        return f"model {name!r} is at its limit of {self.limit(name)} requests in flight; retry later"
