"""What every task pipeline shares: decode off the event loop, a dynamic batcher, stage timings."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar

import numpy as np

from eca_serve import tracing
from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.errors import InferenceRequestError, InvalidParameterError, WrongTaskError
from eca_serve.pipelines.contract import ImageInput, Inputs, LayerWeights, Result, RunParams, StageTimes
from eca_serve.pipelines.drift import DEFAULT_BUDGET, DEFAULT_WINDOW, DriftMonitor, DriftReference
from eca_serve.pipelines.images import DecodedImage, DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target
from eca_serve.pipelines.preprocess_fast import check_mode
from eca_serve.repository import EntryConfig, attention_output

__all__ = ["ImageInput", "LayerWeights", "ModelPipeline", "Prepared", "Ran", "StageTimes"]


@dataclass
class Prepared:
    """A decoded and preprocessed image, ready to batch."""

    tensor: np.ndarray
    decoded: DecodedImage | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Ran:
    """One input after inference.

    Attributes:
        outputs: The model's outputs for this input (see `eca_serve.runtime.base`).
        input_shape: The model input [3, h, w] it ran on.
        size: (width, height) the answer's coordinates refer to: the image sent, or the tensor.
        filename: Client-side name of the image, if any.
    """

    outputs: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    size: tuple[int, int]
    filename: str | None = None


@dataclass
class _Item:
    tensor: np.ndarray
    enqueued: float = field(default_factory=time.perf_counter)
    trace: object | None = None  # the request's span context (tracing on and this request sampled)


StageObserver = Callable[[str, str, float], None]  # (model, stage, seconds)


class ModelPipeline:
    """Decode -> preprocess -> batch -> infer -> postprocess for one model version (see `run`).

    Subclasses are the task pipelines: each names its parameter model and the action it performs.

    Args:
        config: The entry's config (the single source of preprocessing truth).
        folder: The entry's folder.
        backend: A classifier or detector backend.
        policy: Batching policy for this model.
        limits: Image decoding limits.
        decode_executor: Threads for decoding/preprocessing (shared between models).
        on_stage: Optional observer of stage durations (metrics).
        on_batch: Optional observer of each batch (size, queue seconds per item, compute seconds).
        drift_window: Images the attention drift summary holds (0 = no drift monitoring).
        drift_budget: Most time spent summarising attention, as a fraction of inference time.
        preprocessing: ``"reference"`` or ``"fast"`` (`eca_serve.pipelines.preprocess_fast`), for an
            entry whose ``input.preprocessing`` is unset.
    """

    params_type: ClassVar[type[RunParams]] = RunParams
    action: ClassVar[str] = "run"

    def __init__(self, config: EntryConfig, folder: Path, backend: Any, policy: BatchPolicy, limits: DecodeLimits,
                 decode_executor: Executor | None = None, on_stage: StageObserver | None = None,
                 on_batch: Callable[[int, list[float], float], None] | None = None, drift_window: int = DEFAULT_WINDOW, drift_budget: float = DEFAULT_BUDGET,
                 preprocessing: str = "reference") -> None:
        self.config, self.folder, self.backend, self.limits = config, folder, backend, limits
        self.preprocessing = check_mode(config.input.preprocessing or preprocessing)
        self.decode_executor = decode_executor
        self.on_stage = on_stage or (lambda *_: None)
        self.batcher: DynamicBatcher = DynamicBatcher(self._run_batch, policy, name=config.name, on_batch=on_batch)
        self.drift = drift_monitor(config, folder, drift_window, drift_budget)
        self._started = False
        self.active = 0  # requests inside `run`: a rollout waits for 0 before stopping a retired version

    @property
    def key(self) -> str:
        return f"{self.config.name}/{self.config.version}"

    @property
    def trace_attributes(self) -> dict[str, str]:
        """Span attributes naming this model version."""
        return {"eca.model": self.config.name, "eca.version": str(self.config.version)}

    @property
    def ready(self) -> bool:
        """Started, not stopping, and every batcher worker alive (a crashed one is being restarted)."""
        return self._started and self.batcher.healthy

    @property
    def unready_reason(self) -> str | None:
        """Why the pipeline is not ready (None when it is): stopped, or a crashed worker awaiting its restart."""
        if not self._started:
            return "stopped"
        if not self.batcher.healthy:
            return "a batch worker crashed and is being restarted"
        return None

    async def start(self) -> None:
        await self.batcher.start()
        self._started = True

    async def stop(self, grace_s: float = 30.0) -> None:
        self._started = False
        await self.batcher.stop(drain=True, grace_s=grace_s)

    async def prepare(self, images: list[ImageInput], times: StageTimes) -> list[Prepared]:
        """Decode and preprocess every image in the decode threads, concurrently."""
        if not images:
            raise InvalidParameterError("no image in the request")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        with tracing.stage("decode", self.trace_attributes):
            prepared = await _await_all([loop.run_in_executor(self.decode_executor, self._prepare_one, img) for img in images])
        times.preprocess += time.perf_counter() - start
        self.on_stage(self.config.name, "preprocess", time.perf_counter() - start)
        return list(prepared)

    def _prepare_one(self, image: ImageInput) -> Prepared:
        decoded = decode_image(image.data, limits=self.limits, content_type=image.content_type, target=self.decode_target())
        return Prepared(self.preprocess(decoded), decoded, image.filename)

    def decode_target(self) -> tuple[int, int] | None:
        """Smallest (W, H) the decoder must keep (JPEG draft mode decodes no smaller)."""
        return decode_target(self.config.input)

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    async def submit(self, tensor: np.ndarray, times: StageTimes, *, priority: int = 0, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Queue one model input; returns its outputs (queue + inference time recorded in ``times``)."""
        item = _Item(tensor, trace=tracing.capture())
        result, queued, infer = await self.batcher.submit(item, key=tensor.shape, priority=priority, timeout_s=timeout_s)
        times.queue += queued
        times.inference = max(times.inference, infer)
        return result

    def _run_batch(self, items: list[_Item]) -> list[tuple[dict[str, np.ndarray], float, float]]:
        start = time.perf_counter()
        for item in items:
            tracing.queue_wait(item.trace, item.enqueued, start, self.trace_attributes)
        with tracing.batch([i.trace for i in items], {**self.trace_attributes, "eca.batch_size": len(items)}):
            outputs = self.infer_batch([i.tensor for i in items])
        seconds = time.perf_counter() - start
        self.on_stage(self.config.name, "inference", seconds)
        if self.drift is not None and self.drift.due(seconds, len(items)):
            observed = time.perf_counter()
            self.drift.observe_rows(self.attention_rows(outputs))
            self.drift.charge(time.perf_counter() - observed)
        return [(out, start - item.enqueued, seconds) for out, item in zip(outputs, items)]

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def run(self, inputs: Inputs, params: RunParams, times: StageTimes | None = None) -> list[Result]:
        """The task contract: one `Result` per input, in order.

        Args:
            inputs: Encoded images (`ImageInput`) or preprocessed tensors [3, H, W], not mixed.
            params: This task's parameter model (``self.params_type``).
            times: Receives the seconds spent per stage.

        Raises:
            InvalidParameterError: no input, mixed inputs, a tensor of the wrong shape, or bad parameters.
            WrongTaskError: parameters of another task.
        """
        times = times if times is not None else StageTimes()
        params = self.check_params(params)
        submit = {"priority": params.priority, "timeout_s": params.timeout_s}
        tracing.annotate(self.trace_attributes)
        self.active += 1
        try:
            ran = await self._infer(inputs, times, submit)
            start = time.perf_counter()
            with tracing.stage("postprocess", self.trace_attributes):
                results = await self.postprocess(ran, params)
        finally:
            self.active -= 1
        times.postprocess += time.perf_counter() - start
        self.on_stage(self.config.name, "postprocess", time.perf_counter() - start)
        return results

    def check_params(self, params: RunParams) -> RunParams:
        """``params`` if they are this task's; subclasses add model-dependent rules."""
        if not isinstance(params, self.params_type):
            raise WrongTaskError.for_model(self.config.name, self.config.task, self.action)
        return params

    async def postprocess(self, ran: list[Ran], params: Any) -> list[Result]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _infer(self, inputs: Inputs, times: StageTimes, submit: dict[str, Any]) -> list[Ran]:
        if not inputs:
            raise InvalidParameterError("no image in the request")
        if all(isinstance(i, ImageInput) for i in inputs):
            return await self._infer_images(list(inputs), times, submit)
        if all(isinstance(i, np.ndarray) for i in inputs):
            return await self._infer_tensors(list(inputs), times, submit)
        raise InvalidParameterError("a request sends either encoded images or tensors, not both")

    async def _infer_tensors(self, tensors: list[np.ndarray], times: StageTimes, submit: dict[str, Any]) -> list[Ran]:
        for tensor in tensors:
            self.check_tensor(tensor)
        outputs = await _await_all([self.submit(np.ascontiguousarray(t, dtype=np.float32), times, **submit) for t in tensors])
        return [Ran(out, t.shape, (t.shape[2], t.shape[1])) for out, t in zip(outputs, tensors)]

    def check_tensor(self, tensor: np.ndarray) -> None:
        """Rules of a preprocessed input: finite [3, H, W]; classifiers need the configured (H, W).

        A tensor that breaks them is a malformed inference request (400), like every other bad v2 tensor.
        """
        size = self.config.input.size
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise InferenceRequestError(f"each input must be [3, H, W], got {list(tensor.shape)}")
        if size is not None and tuple(tensor.shape[1:]) != tuple(size):
            raise InferenceRequestError(f"{self.config.name} takes [3, {size[0]}, {size[1]}] inputs, got {list(tensor.shape)}")
        if tensor.shape[1] < 1 or tensor.shape[2] < 1 or tensor.shape[1] * tensor.shape[2] > self.limits.max_pixels:
            raise InferenceRequestError(f"input size {list(tensor.shape)} is outside 1..{self.limits.max_pixels} pixels")
        if not np.isfinite(tensor).all():
            raise InferenceRequestError("an input holds NaN or infinite values")

    async def _infer_images(self, images: list[ImageInput], times: StageTimes, submit: dict[str, Any]) -> list[Ran]:
        # A traced request keeps the two-hop path: its decode and queue spans need the event loop's span context.
        traced = tracing.capture() is not None
        if len(images) == 1 and not traced and (claimed := await self._infer_claimed(images[0], times, submit)) is not None:
            return [claimed]
        self.batcher.check_room(min(len(images), self.batcher.policy.max_queue_size))  # refuse a flood before decoding it
        prepared = await self.prepare(images, times)
        outputs = await _await_all([self.submit(p.tensor, times, **submit) for p in prepared])
        return [Ran(out, p.tensor.shape, p.decoded.original_size, p.filename) for out, p in zip(outputs, prepared)]

    async def _infer_claimed(self, image: ImageInput, times: StageTimes, submit: dict[str, Any]) -> Ran | None:
        """One image on an idle instance: decode, preprocess and infer in one executor call (one thread hop
        instead of two); None when no instance is idle or requests are queued (nothing ran)."""
        prepared: list[Prepared] = []

        def prepare() -> _Item:
            start = time.perf_counter()
            prepared.append(self._prepare_one(image))
            seconds = time.perf_counter() - start
            times.preprocess += seconds
            self.on_stage(self.config.name, "preprocess", seconds)
            return _Item(prepared[0].tensor)

        future = self.batcher.try_claim(prepare, **submit)
        if future is None:
            return None
        result, queued, infer = await future
        times.queue += queued
        times.inference = max(times.inference, infer)
        p = prepared[0]
        return Ran(result, p.tensor.shape, p.decoded.original_size, p.filename)

    def attention_rows(self, outputs: list[dict[str, np.ndarray]]) -> np.ndarray:
        """A batch's attention as rows [N, sum of C]: each item's layers concatenated in config order."""
        keys = [attention_output(a.name) for a in self.config.attention]
        return np.stack([np.concatenate([np.ravel(o[k]) for k in keys]) for o in outputs]).astype(np.float32, copy=False)

    def layer_weights(self, outputs: dict[str, np.ndarray]) -> list[LayerWeights]:
        """One image's attention, one entry per layer of the config (weights [C])."""
        return [LayerWeights(a.name, a.kind, a.channels, a.k_size, np.asarray(outputs[attention_output(a.name)]).reshape(-1), a.shape)
                for a in self.config.attention]


async def _await_all(awaitables: list[Awaitable[Any]]) -> list[Any]:
    """Results of ``awaitables`` in order; one is awaited directly, without gather's extra task (the common case)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))


def drift_monitor(config: EntryConfig, folder: Path, window: int, budget: float = DEFAULT_BUDGET) -> DriftMonitor | None:
    """The entry's drift monitor, or None without a reference (or with ``window`` 0)."""
    if config.drift is None or window <= 0:
        return None
    return DriftMonitor(DriftReference.load(folder / config.drift.file), window, budget)
