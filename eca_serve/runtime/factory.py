"""Backends created from a repository entry's config, warmed up before they report ready."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.errors import ConfigError
from eca_serve.kinds import BACKEND_KINDS
from eca_serve.runtime.base import BackendOptions

log = logging.getLogger(__name__)
KINDS = BACKEND_KINDS
_ARTIFACT = {"onnxruntime": "onnx", "openvino": "onnx", "torchscript": "torchscript", "eager": "weights"}


def create_backend(folder: Path, config: Any, options: BackendOptions) -> Any:
    """A classifier or detector backend of ``options.kind`` for the entry in ``folder``.

    Raises:
        ConfigError: unknown kind, or the entry has no artifact for it.
    """
    if options.kind not in KINDS:
        raise ConfigError(f"unknown backend {options.kind!r}; choose one of {list(KINDS)}")
    artifact = config.artifacts.get(_ARTIFACT[options.kind])
    if artifact is None:
        raise ConfigError(f"{config.name}: no {_ARTIFACT[options.kind]} artifact for backend {options.kind}")
    detector = config.task != "classification"
    name = f"{config.name}/{config.version}:{options.kind}"
    if options.kind == "onnxruntime":
        from eca_serve.runtime.onnx_backend import OnnxClassifier, OnnxDetector, create_session

        session = create_session(folder / artifact.file, options, fixed_shapes=not detector)
        return (OnnxDetector if detector else OnnxClassifier)(session, options, name)
    if options.kind == "openvino":
        return _openvino_backend(folder / artifact.file, options, name, detector)
    try:
        from eca_serve.runtime.torch_backend import TorchClassifier, TorchDetector, load_eager, load_torchscript
    except ImportError as exc:  # the base install serves ONNX Runtime only
        raise ConfigError(f"backend {options.kind} needs torch: pip install 'eca-serve[torch]' ({exc})") from None

    module = load_torchscript(folder / artifact.file, options) if options.kind == "torchscript" else load_eager(config, folder, options)
    return (TorchDetector if detector else TorchClassifier)(module, options, name)


def _openvino_backend(path: Path, options: BackendOptions, name: str, detector: bool) -> Any:
    """The ONNX Runtime wrappers around an OpenVINO-compiled ``model.onnx`` (same outputs and dtypes)."""
    from eca_serve.runtime.engines import openvino_installed
    from eca_serve.runtime.openvino_backend import create_openvino_session
    from eca_serve.runtime.onnx_backend import OnnxClassifier, OnnxDetector

    if not openvino_installed():
        raise ConfigError("backend openvino needs openvino: pip install 'eca-serve[openvino]'")
    session = create_openvino_session(path, options, name.rsplit(":", 1)[0])
    return (OnnxDetector if detector else OnnxClassifier)(session, options, name)


def warm_up(backend: Any, config: Any, batch_sizes: tuple[int, ...] = (1,), rounds: int = 2) -> float:
    """Run real-shaped inputs through ``backend`` (kernel selection, allocator, JIT); returns seconds."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    h, w = _sample_size(config)
    for variant in getattr(backend, "variants", lambda: [nullcontext()])():
        with variant:
            for _ in range(rounds):
                for n in batch_sizes:
                    _run(backend, config, rng.random((n, 3, h, w), dtype=np.float32))
    seconds = time.perf_counter() - start
    log.info("warmed up %s in %.2fs", backend.name, seconds)
    return seconds


def _sample_size(config: Any) -> tuple[int, int]:
    """(H, W) of sample inputs: the classifier's input size, or the detector's warm-up size."""
    return tuple(config.warmup_size())


def _run(backend: Any, config: Any, batch: np.ndarray) -> None:
    """One backend call on ``batch`` [N, 3, H, W]: a batch for classifiers, a list of images for detectors."""
    backend.infer(batch if config.task == "classification" else list(batch))
