"""Server settings from arguments and ``ECA_SERVE_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from eca_serve.kinds import BackendChoice, Device
from eca_serve.repository import BATCHING_FIELDS

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    """Every knob of ``eca-serve serve``; each field is also ``ECA_SERVE_<FIELD>`` in the environment.

    The batching fields (`eca_serve.repository.BATCHING_FIELDS`: ``max_batch_size``, ``max_queue_delay_ms``,
    ``max_queue_size``, ``instances``, ``timeout_s``, ``max_inflight``, named as in config.json's ``serving``
    block and in `BatchPolicy`) are defaults for the entries whose config.json ``serving`` block omits
    them: per model, that block > these settings > the per-device defaults of `BatchPolicy.for_device`
    (CPU: no queue delay, batches of at most 4, two instances; CUDA: batches of 32, 2 ms delay).
    With ``threads`` unset on CPU, each instance gets ``cores // instances`` intra-op threads.
    """

    model_config = SettingsConfigDict(env_prefix="ECA_SERVE_", extra="ignore")

    model_repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535, description="Open Inference Protocol over gRPC (0 = off; 8001 as Triton)")
    device: Device = Field(Device("cpu"), description="cpu | cuda | cuda:N (any case; stored lower-case)")
    backend: BackendChoice = Field(
        "auto", description="auto: each entry's serving.engine, else the rule of eca_serve.runtime.engines")
    openvino_cache_dir: str = Field("", description="OpenVINO compiled-model cache (a folder per entry; empty = off)")
    fp16: bool = False
    threads: int = Field(0, ge=0, description="intra-op threads per model (0 = library default)")
    decode_threads: int = Field(2, ge=1)
    preprocessing: Literal["fast", "reference"] = Field("reference", description="classifier preprocessing: reference "
                                                         "(torchvision's PIL transform) or fast (one boxed resize; "
                                                         "an entry's input.preprocessing wins)")
    max_batch_size: int | None = Field(None, ge=1, description="default for entries without serving.max_batch_size")
    max_queue_delay_ms: float | None = Field(None, ge=0, description="default for entries without serving.max_queue_delay_ms")
    max_queue_size: int | None = Field(None, ge=1, description="default for entries without serving.max_queue_size")
    instances: int | None = Field(None, ge=1, description="batches of one model running at once (CPU default 2); "
                                  "default for entries without serving.instances")
    timeout_s: float = Field(30.0, gt=0, description="queue + inference limit per request (504), "
                             "default for entries without serving.timeout_s")
    request_timeout_s: float | None = Field(None, gt=0, exclude=True, description="deprecated name of timeout_s")
    max_inflight: int | None = Field(None, ge=1, description="requests of one model held at once before 503, "
                                     "default for entries without serving.max_inflight (else queue + batch x instances)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request body must arrive within this (else 408)")
    max_inflight_requests: int | None = Field(None, ge=1, description="HTTP requests in flight beyond this get 503 "
                                              "at once (default: cpu 128, cuda 1024)")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(16, ge=1)
    grace_period_s: float = Field(30.0, ge=0)
    drift_window: int = Field(512, ge=0, description="recent images per model in the attention drift summary (0 = off)")
    drift_budget: float = Field(0.01, gt=0, description="most time spent on the drift summary, as a fraction of inference "
                                "time: very fast models get a sample of their batches summarised (e.g. 100: every batch)")
    models: list[str] = Field(default_factory=list, description="serve only these names (default: all)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False
    ui: bool = Field(True, description="the demo page at / (off: / answers 404)")
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "explicit", description="none: serve what is there at start; explicit: also the admin load/unload API; "
        "poll: rescan the repository every repository_poll_secs (load new versions, unload removed ones)")
    repository_poll_secs: float = Field(15.0, gt=0, description="seconds between repository scans in poll mode")
    tracing: bool = Field(False, description="OpenTelemetry traces, configured by the OTEL_* variables "
                          "(needs eca-serve[tracing])")
    admin_enabled: bool = False
    admin_token: str | None = None

    @model_validator(mode="after")
    def _deprecated_names(self) -> Settings:
        if self.request_timeout_s is not None:
            log.warning("ECA_SERVE_REQUEST_TIMEOUT_S / request_timeout_s is deprecated: use ECA_SERVE_TIMEOUT_S / timeout_s "
                        "(the name config.json's serving block uses)")
            if "timeout_s" not in self.model_fields_set:
                self.timeout_s = self.request_timeout_s
        return self

    def batching_defaults(self) -> dict[str, Any]:
        """The batching fields that are set, as `BatchPolicy` keywords (defaults under each entry's ``serving``)."""
        return {k: getattr(self, k) for k in BATCHING_FIELDS if getattr(self, k) is not None}


def inflight_limit(settings: Settings, device: Device | None = None) -> int:
    """``max_inflight_requests``, or the default of ``device`` (the served one; default: the setting) when unset.

    CPU: 128, twice what the default queues (64 per model) can take, so a flood beyond that is refused
    before its bodies are read (measured in a 90 s flood run: 503 median 0.49 -> 0.28 s, accepted
    requests' p99 during floods 2.0 -> 1.1 s, against a limit of 512). CUDA: 1024, above its
    default queue of 512.
    """
    if settings.max_inflight_requests is not None:
        return settings.max_inflight_requests
    return 1024 if (device or settings.device).is_cuda else 128
