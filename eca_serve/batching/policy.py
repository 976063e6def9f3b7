"""How a dynamic batcher forms batches, bounds its queue and times requests out."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from eca_serve.errors import ConfigError
from eca_serve.kinds import Device


@dataclass(frozen=True)
class BatchPolicy:
    """Batching rules of one model, modelled on Triton's dynamic batcher.

    When the batcher's worker is free it takes up to ``max_batch_size`` queued requests of one
    group key: the key of the request due next (highest priority, then earliest arrival), taken
    in that same order. It waits for more only while a full batch cannot be formed, and then at
    most until the request due next has been queued for ``max_queue_delay_ms`` (time it spent
    queued behind a running batch counts); with a delay of 0 it never waits and runs whatever is
    already queued.

    Every field but ``claim_idle`` has the same name in config.json's ``serving`` block and in the
    ``ECA_SERVE_*`` settings (`eca_serve.repository.BATCHING_FIELDS`).

    Attributes:
        max_batch_size: Most items handed to the handler in one call (>= 1).
        max_queue_delay_ms: Longest time a request may wait for others to join its batch (>= 0).
        max_queue_size: Most requests waiting in the queue; one more is rejected at once with
            ``QueueFullError`` (>= max_batch_size, so a full batch can always form).
        timeout_s: Default per-request limit on queue time plus execution time; None = no limit.
        instances: Batches that may run at the same time, each in its own thread (Triton's
            instance count); the handler must then be thread-safe.
        claim_idle: A request that arrives while an instance is idle and nothing is queued runs
            at once as a batch of one, without waking a worker or waiting ``max_queue_delay_ms``
            for companions (nothing waits, so no one is served later for it). False: it queues
            and waits like any other.
        max_inflight: Most requests of this model held by the server at once (decoding, queued or
            running); one more is refused before its body is read. None: `inflight_limit`'s default.
    """

    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256
    timeout_s: float | None = 30.0
    instances: int = 1
    claim_idle: bool = True
    max_inflight: int | None = None

    def __post_init__(self) -> None:
        if self.max_inflight is not None:
            _require_int("max_inflight", self.max_inflight, minimum=1)
        _require_int("max_batch_size", self.max_batch_size, minimum=1)
        _require_int("instances", self.instances, minimum=1)
        _require_int("max_queue_size", self.max_queue_size, minimum=1)
        if self.max_queue_size < self.max_batch_size:
            raise ConfigError(
                f"max_queue_size must be >= max_batch_size so that a full batch can form, "
                f"got max_queue_size={self.max_queue_size} < max_batch_size={self.max_batch_size}"
            )
        if not _is_real(self.max_queue_delay_ms) or not 0 <= self.max_queue_delay_ms < math.inf:
            raise ConfigError(
                f"max_queue_delay_ms must be a finite number >= 0, got {self.max_queue_delay_ms!r}"
            )
        check_timeout_s(self.timeout_s)

    @property
    def inflight_limit(self) -> int:
        """``max_inflight``, else what the queue and the running batches hold together
        (``max_queue_size + max_batch_size * instances``): a request beyond it could only be refused later."""
        if self.max_inflight is not None:
            return self.max_inflight
        return self.max_queue_size + self.max_batch_size * self.instances

    @property
    def max_queue_delay_s(self) -> float:
        """``max_queue_delay_ms`` in seconds."""
        return self.max_queue_delay_ms / 1000.0

    @classmethod
    def for_device(cls, device: Device | str, **overrides: Any) -> BatchPolicy:
        """Default policy for a device kind, with optional field overrides.

        ``"cpu"``: ``max_batch_size=4, max_queue_delay_ms=0, max_queue_size=64, instances=2``. On
        the target machine (2 cores, ONNX Runtime) the cost per image is flat in the batch size, so
        batching brings no throughput and any wait for more requests is pure added latency; hence a
        delay of 0. Taking what is already queued is still worth it, as it amortizes the fixed cost
        per call (thread hop, session run, Python glue) under load. The batch stays small because
        with a flat per-image cost every member of a batch of B waits for all B images. Two
        instances, each given half the cores by the model manager, beat one batch on all cores
        under load: a single-threaded run never waits at an intra-op barrier for a thread that the
        OS gave to image decoding (measured: ECA-MobileNetV2 200 img/s as 2 x 1 thread, 140-185 as
        1 x 2 threads). The queue is short because at a few tens of images per second, 64 queued
        images already mean seconds of waiting: rejecting early (``QueueFullError``) beats timing
        out late.

        ``"cuda"`` (also ``"cuda:N"``): ``max_batch_size=32, max_queue_delay_ms=2, max_queue_size=512``.
        A GPU runs a batch of 32 in little more time than a batch of 1, so batches raise throughput
        many times; a 2 ms wait is small next to the compute of a batch and lets a batch fill under
        load, while an idle server adds at most 2 ms to a lone request. The higher throughput
        drains a longer queue in well under a second. One instance: the GPU is kept busy by large
        batches, and a second would only contend for it.

        Args:
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (any spelling, see `Device`).
            **overrides: Fields replacing the device defaults, e.g. ``timeout_s=5.0``.

        Returns:
            A validated policy.

        Raises:
            ConfigError: For an unknown device kind or an override that breaks a rule.
        """
        kind = Device(device).kind
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown BatchPolicy fields: {sorted(unknown)}")
        return cls(**{**_DEVICE_DEFAULTS[kind], **overrides})


_DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {"max_batch_size": 4, "max_queue_delay_ms": 0.0, "max_queue_size": 64, "instances": 2},
    "cuda": {"max_batch_size": 32, "max_queue_delay_ms": 2.0, "max_queue_size": 512, "instances": 1},
}


def check_timeout_s(value: object) -> None:
    """Raise ConfigError unless ``value`` is None or a finite number > 0 (a timeout in seconds)."""
    if value is not None and (not _is_real(value) or not 0 < value < math.inf):  # type: ignore[operator]
        raise ConfigError(f"timeout_s must be None or a finite number > 0, got {value!r}")


def _is_real(value: object) -> bool:
    """True for ints and floats, False for bools (a ``True`` delay is a bug, not 1 ms)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_int(name: str, value: object, *, minimum: int) -> None:
    """Raise ConfigError unless ``value`` is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
