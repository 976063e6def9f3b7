"""What every task pipeline shares: decode off the event loop, a dynamic batcher, stage timings."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from eca_serve.batching import BatchPolicy, DynamicBatcher
from eca_serve.errors import InvalidParameterError
from eca_serve.repository import EntryConfig
from eca_serve.pipelines.images import DecodedImage, DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target
from eca_serve.runtime import attention_key


@dataclass(frozen=True)
class ImageInput:
    """One encoded image of a request.

    Attributes:
        data: The file's bytes.
        content_type: The client's declared media type (a hint; the bytes decide).
        filename: Client-side name, echoed in answers.
    """

    data: bytes
    content_type: str | None = None
    filename: str | None = None


@dataclass
class StageTimes:
    """Seconds spent per stage for one request (summed over its images where stages repeat)."""

    preprocess: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0


@dataclass
class Prepared:
    """A decoded and preprocessed image, ready to batch."""

    tensor: np.ndarray
    decoded: DecodedImage | None = None
    filename: str | None = None


@dataclass
class LayerWeights:
    """One attention layer's weights for one image."""

    name: str
    kind: str
    channels: int
    k_size: int | None
    weights: np.ndarray  # [C] float32 in (0, 1)


@dataclass
class _Item:
    tensor: np.ndarray
    enqueued: float = field(default_factory=time.perf_counter)


StageObserver = Callable[[str, str, float], None]  # (model, stage, seconds)


class ModelPipeline:
    """Decode -> preprocess -> batch -> infer for one model version.

    Args:
        config: The entry's config (the single source of preprocessing truth).
        folder: The entry's folder.
        backend: A classifier or detector backend.
        policy: Batching policy for this model.
        limits: Image decoding limits.
        decode_executor: Threads for decoding/preprocessing (shared between models).
        on_stage: Optional observer of stage durations (metrics).
    """

    def __init__(self, config: EntryConfig, folder: Path, backend: Any, policy: BatchPolicy, limits: DecodeLimits,
                 decode_executor: Executor | None = None, on_stage: StageObserver | None = None,
                 on_batch: Callable[[int, list[float], float], None] | None = None) -> None:
        self.config, self.folder, self.backend, self.limits = config, folder, backend, limits
        self.decode_executor = decode_executor
        self.on_stage = on_stage or (lambda *_: None)
        self.batcher: DynamicBatcher = DynamicBatcher(self._run_batch, policy, name=config.name, on_batch=on_batch)
        self.ready = False

    @property
    def key(self) -> str:
        return f"{self.config.name}/{self.config.version}"

    async def start(self) -> None:
        await self.batcher.start()
        self.ready = True

    async def stop(self, grace_s: float = 30.0) -> None:
        self.ready = False
        await self.batcher.stop(drain=True, grace_s=grace_s)

    async def prepare(self, images: list[ImageInput], times: StageTimes) -> list[Prepared]:
        """Decode and preprocess every image in the decode threads, concurrently."""
        if not images:
            raise InvalidParameterError("no image in the request")
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
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
        item = _Item(tensor)
        result, queued, infer = await self.batcher.submit(item, key=tensor.shape, priority=priority, timeout_s=timeout_s)
        times.queue += queued
        times.inference = max(times.inference, infer)
        return result

    def _run_batch(self, items: list[_Item]) -> list[tuple[dict[str, np.ndarray], float, float]]:
        start = time.perf_counter()
        outputs = self.infer_batch([i.tensor for i in items])
        seconds = time.perf_counter() - start
        self.on_stage(self.config.name, "inference", seconds)
        return [(out, start - item.enqueued, seconds) for out, item in zip(outputs, items)]

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def infer_tensors(self, tensors: list[np.ndarray], times: StageTimes | None = None, **submit: object) -> list[dict[str, np.ndarray]]:
        """Raw model outputs for already-preprocessed inputs (each [3, H, W] float32), batched with other requests.

        Raises:
            InvalidParameterError: an input of the wrong rank, channel count or (classifiers) spatial size.
        """
        times = times or StageTimes()
        for tensor in tensors:
            self.check_tensor(tensor)
        return list(await asyncio.gather(*[self.submit(np.ascontiguousarray(t, dtype=np.float32), times, **submit) for t in tensors]))

    def check_tensor(self, tensor: np.ndarray) -> None:
        """Shape rules of a preprocessed input: [3, H, W]; classifiers need the configured (H, W)."""
        size = self.config.input.size
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise InvalidParameterError(f"each input must be [3, H, W], got {list(tensor.shape)}")
        if size is not None and tuple(tensor.shape[1:]) != tuple(size):
            raise InvalidParameterError(f"{self.config.name} takes [3, {size[0]}, {size[1]}] inputs, got {list(tensor.shape)}")
        if tensor.shape[1] < 1 or tensor.shape[2] < 1 or tensor.shape[1] * tensor.shape[2] > self.limits.max_pixels:
            raise InvalidParameterError(f"input size {list(tensor.shape)} is outside 1..{self.limits.max_pixels} pixels")

    async def infer_images(self, images: list[ImageInput], times: StageTimes | None = None, **submit: object) -> list[tuple[Prepared, dict[str, np.ndarray]]]:
        """Decode, preprocess and run encoded images; raw outputs with each image's `Prepared` record."""
        times = times or StageTimes()
        self.batcher.check_room(min(len(images), self.batcher.policy.max_queue_size))  # refuse a flood before decoding it
        prepared = await self.prepare(images, times)
        outputs = await _await_all([self.submit(p.tensor, times, **submit) for p in prepared])
        return list(zip(prepared, outputs))

    def layer_weights(self, outputs: dict[str, np.ndarray]) -> list[LayerWeights]:
        """One image's attention, one entry per layer of the config (weights [C])."""
        return [LayerWeights(a.name, a.kind, a.channels, a.k_size, np.asarray(outputs[attention_key(a.name)]).reshape(-1))
                for a in self.config.attention]


async def _await_all(awaitables: list[Awaitable[Any]]) -> list[Any]:
    """Results of ``awaitables`` in order; one is awaited directly, without gather's extra task (the common case)."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    return list(await asyncio.gather(*awaitables))
