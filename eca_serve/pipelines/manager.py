"""Loads the model repository into pipelines: every version of every model, warmed up, then ready."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from eca_serve.batching import BatchPolicy
from eca_serve.errors import ConfigError, NotReadyError, UnknownModelError
from eca_serve.kinds import Device
from eca_serve.repository import EntryConfig, check_safe_name, list_entries, parse_config, verify_artifacts
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.control import ModelControl, Mode
from eca_serve.pipelines.drift import DEFAULT_BUDGET, DEFAULT_WINDOW
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.pipelines.servable import servable_entries
from eca_serve.pipelines.tasks import pipeline_class
from eca_serve.runtime import BackendOptions, create_backend, warm_up
from eca_serve.runtime.engines import entry_options

log = logging.getLogger(__name__)


@dataclass
class ServingOptions:
    """What the manager needs from the settings.

    ``policy_defaults`` are the server's batching settings (``ECA_SERVE_*``, as `BatchPolicy` keywords):
    defaults for the fields an entry's ``serving`` block leaves unset (see `policy_for`).
    """

    repository: Path
    backend: BackendOptions
    policy_defaults: dict[str, Any] = field(default_factory=dict)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    decode_threads: int = 2
    only: list[str] = field(default_factory=list)
    grace_period_s: float = 30.0
    drift_window: int = DEFAULT_WINDOW
    drift_budget: float = DEFAULT_BUDGET
    control_mode: Mode = "explicit"
    poll_s: float = 15.0
    preprocessing: str = "reference"  # "fast" | "reference": entries without input.preprocessing


def policy_for(config: EntryConfig, device: Device | str, defaults: dict[str, Any]) -> BatchPolicy:
    """The batching policy of one entry, decided field by field, first match wins.

    1. the entry's ``serving`` block in config.json (if it applies to ``device``), as Triton's
       model config wins over server defaults;
    2. ``defaults``: the server's ``ECA_SERVE_*`` settings, defaults for entries that omit a field;
    3. the device default (`BatchPolicy.for_device`).

    Nothing is measured here: the same config always gives the same policy, whatever the machine's
    load at start-up (``eca-serve profile NAME --recommend`` measures, once, and writes the block).

    Raises:
        ConfigError: A combination that breaks a policy rule, naming the entry.
    """
    serving = config.serving.fields_for(device) if config.serving is not None else {}
    shadowed = {k: v for k, v in defaults.items() if k in serving and serving[k] != v}
    if shadowed:  # an operator who set ECA_SERVE_* should find why this model ignores it
        log.info("%s/%s: config.json serving %s wins over the server settings %s", config.name, config.version,
                 {k: serving[k] for k in shadowed}, shadowed)
    try:
        return BatchPolicy.for_device(device, **{**defaults, **serving})
    except ConfigError as exc:
        raise ConfigError(f"{config.name}/{config.version}: serving policy from config.json {serving} "
                          f"over server settings {defaults}: {exc}") from None


def backend_options_for(options: BackendOptions, policy: BatchPolicy) -> BackendOptions:
    """``options`` with the CPU cores shared out between the policy's instances when threads are unset.

    Each concurrently running batch gets ``cores // instances`` intra-op threads, so the instances
    together use every core once instead of oversubscribing them; a batch running alone gets every
    core (``solo_threads``, honoured by the ONNX Runtime backend).
    """
    if options.threads > 0 or options.device.is_cuda:
        return options
    cores = available_cores()
    return dataclasses.replace(options, threads=max(1, cores // policy.instances), solo_threads=cores)


def available_cores() -> int:
    """CPU cores this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ModelManager:
    """All served pipelines by name and version; the newest version answers when none is named."""

    def __init__(self, options: ServingOptions, on_stage: Callable | None = None, on_batch_for: Callable | None = None) -> None:
        self.options = options
        self.on_stage, self.on_batch_for = on_stage, on_batch_for
        self.decode_executor = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="decode")
        self.pipelines: dict[str, dict[int, ModelPipeline]] = {}
        self.expected: set[tuple[str, int]] = set()
        self.load_seconds: dict[str, float] = {}
        self.loading_error: str | None = None
        self._parsed: dict[Path, EntryConfig] = {}  # configs read by discovery, verified and used by _build
        self.control = ModelControl(self, options.control_mode, options.poll_s)

    def discover(self) -> list[tuple[str, int, Path]]:
        """Entries of the repository that will be served."""
        entries = self._servable(list_entries(self.options.repository))
        if self.options.only:
            have = sorted({e[0] for e in entries})
            missing = [n for n in self.options.only if n not in have]
            if missing:
                raise ConfigError(f"no model {', '.join(map(repr, missing))} in {self.options.repository} that the "
                                  f"{self.options.backend.kind} backend can serve (it has: {', '.join(have) or 'none'})")
            entries = [e for e in entries if e[0] in self.options.only]
        if not entries:
            raise ConfigError(f"no models found in {self.options.repository} (expected <name>/<version>/config.json)")
        self.expected = {(n, v) for n, v, _ in entries}
        return entries

    def _servable(self, entries: list[tuple[str, int, Path]]) -> list[tuple[str, int, Path]]:
        return servable_entries(entries, self.options.backend.device, self.options.backend.kind, read=self._parse)

    def _parse(self, folder: Path) -> EntryConfig:
        self._parsed[folder] = parse_config(folder)
        return self._parsed[folder]

    async def load_all(self) -> None:
        """Load, warm up and start what the version policies select (in worker threads); poll mode then polls."""
        await self.control.start()

    async def load(self, name: str, version: int, folder: Path) -> ModelPipeline:
        start = time.perf_counter()
        pipeline = await asyncio.to_thread(self._build, folder)
        await pipeline.start()
        self.pipelines.setdefault(name, {})[version] = pipeline
        self.expected.add((name, version))
        self.load_seconds[f"{name}/{version}"] = time.perf_counter() - start
        policy = pipeline.batcher.policy
        log.info("model %s/%s ready (%s on %s, batches of <= %d, %d instances) in %.2fs", name, version,
                 getattr(pipeline.backend, "kind", self.options.backend.kind), pipeline.backend.device, policy.max_batch_size, policy.instances,
                 self.load_seconds[f"{name}/{version}"])
        return pipeline

    def _build(self, folder: Path) -> ModelPipeline:
        config = self._parsed.pop(folder, None) or parse_config(folder)
        verify_artifacts(folder, config)
        policy = policy_for(config, self.options.backend.device, self.options.policy_defaults)
        backend = create_backend(folder, config, entry_options(backend_options_for(self.options.backend, policy), config))
        warm_up(backend, config, batch_sizes=tuple(sorted({1, policy.max_batch_size})) if config.task == "classification" else (1,))
        cls = pipeline_class(config.task)
        on_batch = self.on_batch_for(config.name) if self.on_batch_for else None
        return cls(config, folder, backend, policy, self.options.limits, self.decode_executor, self.on_stage, on_batch,
                   drift_window=self.options.drift_window, drift_budget=self.options.drift_budget,
                   preprocessing=self.options.preprocessing)

    async def load_model(self, name: str) -> list[int]:
        """Load the versions of ``name`` its policy selects and retire the others (explicit mode only)."""
        return await self.control.load_model(check_name(name))

    async def unload_model(self, name: str) -> list[int]:
        """Drain and stop every version of ``name`` (explicit mode only)."""
        return await self.control.unload_model(check_name(name))

    @property
    def ready(self) -> bool:
        """True once every expected entry is loaded and started."""
        loaded = {(n, v) for n, versions in self.pipelines.items() for v, p in versions.items() if p.ready}
        return bool(self.expected) and self.expected <= loaded

    def get(self, name: str, version: int | None = None) -> ModelPipeline:
        """The pipeline of ``name`` at ``version``, else its newest ready version; 404/503-style errors otherwise."""
        check_name(name)
        versions = self.pipelines.get(name)
        if not versions:
            if any(n == name for n, _ in self.expected):
                raise NotReadyError(f"model {name!r} is loading")
            raise UnknownModelError(f"unknown model {name!r}; available: {sorted(self.names())}")
        if version is None:  # a crashed or stopping newest version leaves the older ones serving
            version = max([v for v, p in versions.items() if p.ready] or versions)
        if version not in versions:
            raise UnknownModelError(f"model {name!r} has no version {version}; available: {sorted(versions)}")
        pipeline = versions[version]
        if not pipeline.ready:
            raise NotReadyError(f"model {name}/{version} is not ready")
        return pipeline

    def inflight_limit(self, name: str) -> int | None:
        """Most requests of ``name`` held at once (the largest over its loaded versions); None when none is loaded."""
        versions = self.pipelines.get(name)
        return max(p.batcher.policy.inflight_limit for p in versions.values()) if versions else None

    def names(self) -> set[str]:
        return {n for n, _ in self.expected} | set(self.pipelines)

    def loaded(self, name: str | None = None) -> list[ModelPipeline]:
        """Every loaded version (of ``name`` only, when given), ready or not, sorted by name and version."""
        names = sorted(self.pipelines) if name is None else [name] if name in self.pipelines else []
        return [p for n in names for _, p in sorted(self.pipelines[n].items())]

    def versions(self, name: str) -> list[int]:
        """The loaded versions of ``name``, oldest first (empty when none is loaded)."""
        return sorted(self.pipelines.get(name, {}))

    def configs(self) -> list[tuple[EntryConfig, bool]]:
        """(config, ready) of every loaded version, sorted by name and version."""
        return [(p.config, p.ready) for p in self.loaded()]

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain every pipeline within the grace period, then release the decode threads."""
        grace = self.options.grace_period_s if grace_s is None else grace_s
        await self.control.stop()
        await asyncio.gather(*[p.stop(grace) for versions in self.pipelines.values() for p in versions.values()])
        self.decode_executor.shutdown(wait=False, cancel_futures=True)


def check_name(name: str) -> str:
    """Model names are plain folder names: no path traversal out of the repository."""
    try:
        return check_safe_name(name, "model name")
    except ConfigError as exc:
        raise UnknownModelError(str(exc)) from None
