"""`DataPlane`: one typed object between the protocols and the model manager.

Requests of every protocol pass the same gate: refused at once while the server drains or when it holds its
limit of requests in flight (``enter``), and, for inference, when the model holds its own limit (``admit``,
`eca_serve.batching.admission.Admission`). Lookups, readiness and statistics raise the errors of
`eca_serve.errors`; each protocol maps their types to its statuses, so the same case gets the same text
everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from eca_serve.batching.admission import Admission
from eca_serve.errors import InferenceRequestError, NotReadyError, QueueFullError, ShuttingDownError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.manager import ModelManager

log = logging.getLogger("eca_serve.dataplane")
SHUTTING_DOWN = "server is shutting down"
LOADING = "models are still loading"
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdecimal would take other scripts' digits
DRAIN_POLL_S = 0.02
UNREADY_SHOWN = 5
R = TypeVar("R")
T = TypeVar("T")


class InflightLimitError(QueueFullError):
    """A limit of requests in flight is reached: the server's (every protocol together) or one model's."""


@dataclass(frozen=True)
class Readiness:
    """Whether a model version serves now, and why not when it does not."""

    ready: bool
    reason: str = ""


def parse_version(version: str | int | None) -> int | None:
    """A model version as protocols spell it: None or ``""`` for the newest, else an integer >= 1.

    Raises:
        InferenceRequestError: A version that is not a decimal integer >= 1.
    """
    if version is None or version == "":
        return None
    number = version if isinstance(version, int) else int(version) if _VERSION.fullmatch(version) else None
    if number is None or number < 1:
        raise InferenceRequestError(f"model version must be an integer >= 1, got {str(version)[:40]!r}")
    return number


class DataPlane:
    """Models, readiness, statistics, refusal and inference for every protocol of one server.

    Args:
        manager: The model manager whose pipelines are served.
        max_inflight: Most requests the server holds at once, all protocols together.
        admission: Per-model in-flight limits (default: the manager's limits).
    """

    def __init__(self, manager: ModelManager, max_inflight: int, admission: Admission | None = None) -> None:
        self.manager, self.max_inflight = manager, max_inflight
        self.admission = admission or Admission(manager.inflight_limit)
        self.draining = False
        self.inflight = 0  # requests held now, every protocol together (probes are not counted)
        self._loading: asyncio.Task | None = None

    # --- life ------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._loading is not None

    async def start(self) -> None:
        """Load the repository in the background: the server answers (not ready) while models load."""
        if self._loading is not None:
            return
        self._loading = asyncio.create_task(self.manager.load_all(), name="load-models")
        self._loading.add_done_callback(self._record_loading_failure)

    async def loaded(self) -> None:
        """Wait until `start`'s loading ends; raises its error, if any."""
        if self._loading is None:
            raise RuntimeError("the data plane was not started")
        await asyncio.shield(self._loading)

    def _record_loading_failure(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.manager.loading_error = str(task.exception())
            log.error("loading the model repository failed: %s", task.exception())

    async def drain(self, grace_s: float) -> int:
        """Refuse new requests; wait up to ``grace_s`` for those held to be answered. Returns those still held."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        if self.inflight:
            log.warning("grace period over with %d request(s) still in flight", self.inflight)
        return self.inflight

    async def stop(self) -> None:
        """Refuse new requests, stop loading, and drain and stop every pipeline (the manager's grace period)."""
        self.draining = True
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.manager.stop()

    # --- readiness -------------------------------------------------------------------------------------

    def server_ready(self) -> Readiness:
        """Ready once every model is loaded and warmed up, until the server drains."""
        if self.draining:
            return Readiness(False, SHUTTING_DOWN)
        if not self.manager.ready:
            return Readiness(False, self.manager.loading_error or self._unready_reason())
        return Readiness(True)

    def _unready_reason(self) -> str:
        """The model versions that keep the server from being ready, and why (at most ``UNREADY_SHOWN``)."""
        loaded = {(p.config.name, p.config.version): p for p in self.manager.loaded()}
        why = [f"{n}/{v} ({loaded[(n, v)].unready_reason if (n, v) in loaded else 'loading'})"
               for n, v in sorted(self.manager.expected) if (n, v) not in loaded or not loaded[(n, v)].ready]
        more = f" and {len(why) - UNREADY_SHOWN} more" if len(why) > UNREADY_SHOWN else ""
        return f"not ready: {', '.join(why[:UNREADY_SHOWN])}{more}" if why else LOADING

    def model_ready(self, name: str, version: str | int | None = None) -> Readiness:
        """Whether ``name`` (at ``version``) serves now.

        Raises:
            UnknownModelError: No such model or version.
            InferenceRequestError: A malformed name or version.
        """
        try:
            self.model(name, version)
        except NotReadyError as exc:
            return Readiness(False, str(exc))
        return Readiness(True)

    # --- lookup ----------------------------------------------------------------------------------------

    def model(self, name: str, version: str | int | None = None) -> ModelPipeline:
        """The ready pipeline of ``name`` at ``version`` (the newest when None or ``""``).

        Raises:
            InferenceRequestError: An empty name, or a version that is not an integer >= 1.
            UnknownModelError: No such model or version.
            NotReadyError: The model is loading, or the version is stopped or restarting a worker.
        """
        if not name:
            raise InferenceRequestError("model name must be a non-empty string")
        return self.manager.get(name, parse_version(version))

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, oldest first."""
        return self.manager.versions(name)

    def models(self) -> list[ModelPipeline]:
        """Every loaded version of every model, ready or not, by name and version."""
        return self.manager.loaded()

    def statistics(self, name: str = "", version: str | int | None = None) -> list[ModelPipeline]:
        """The versions whose statistics are asked: every loaded one without ``name``, one with ``version``,
        else every version of ``name`` (which must be served).

        Raises:
            The errors of `model`.
        """
        if not name:
            return self.models()
        pipeline = self.model(name, version)
        return [pipeline] if parse_version(version) is not None else self.manager.loaded(name)

    # --- refusal ---------------------------------------------------------------------------------------

    def enter(self) -> None:
        """Hold one request (release with `leave`), before anything of it is read.

        Raises:
            ShuttingDownError: The server drains.
            InflightLimitError: The server holds its limit of requests (refused before the body is read, so a
                flood buys no decode work or memory).
        """
        if self.draining:
            raise ShuttingDownError(SHUTTING_DOWN)
        if self.inflight >= self.max_inflight:
            raise InflightLimitError(f"server is at its limit of {self.max_inflight} requests in flight; retry later")
        self.inflight += 1

    def leave(self) -> None:
        """One request held by `enter` was answered (or abandoned)."""
        self.inflight -= 1

    def admit(self, name: str) -> bool:
        """Count one inference request of model ``name`` (release with `release` when True).

        Returns:
            False for a name that is not served: it is not counted and its lookup answers why.

        Raises:
            InflightLimitError: The model holds its limit of requests.
        """
        admitted = self.admission.try_admit(name)
        if admitted is False:
            raise InflightLimitError(self.admission.refusal(name))
        return bool(admitted)

    def release(self, name: str) -> None:
        """One request counted by `admit` was answered (or abandoned)."""
        self.admission.release(name)

    # --- inference -------------------------------------------------------------------------------------

    async def infer(self, pipeline: ModelPipeline, request: R, encoder: Callable[[ModelPipeline, R], Awaitable[T]]) -> T:
        """Inference of ``request`` on ``pipeline``, the one dispatch point of every protocol.

        ``encoder`` is the protocol's task mapping (v2's `run_inference`): it turns the request into the
        pipeline's inputs and parameters, awaits `ModelPipeline.run` and turns the `Result`s into its answer.
        """
        return await encoder(pipeline, request)
