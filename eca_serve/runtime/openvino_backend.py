"""OpenVINO backend (CPU): the entry's own ``model.onnx`` (FP32 or QDQ INT8) compiled by OpenVINO.

A compiled model is wrapped in `OpenVinoSession`, which answers the calls ONNX Runtime's session
answers (``run``, ``get_inputs``, ``get_outputs``, ``get_providers``), so the ONNX Runtime classifier
and detector wrappers serve it unchanged: same output names, same dtypes, the same load-aware
choice between an all-cores model for a lone run and a shared one under load.

OpenVINO owns the threads: our batcher's instances map to OpenVINO streams of one compiled model
(``NUM_STREAMS`` = instances, ``INFERENCE_NUM_THREADS`` = their threads together), so concurrent
batches each run on their own stream's share of the cores and never oversubscribe them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.runtime.base import BackendOptions

log = logging.getLogger(__name__)
_PRECISION_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8: the QDQ graph as it is, float between


@dataclasses.dataclass(frozen=True)
class _Port:
    """What ``get_inputs()`` / ``get_outputs()`` of an ONNX Runtime session give: a name."""

    name: str


class OpenVinoSession:
    """One compiled model behind ONNX Runtime's session calls; one infer request per calling thread."""

    def __init__(self, compiled: Any, streams: int) -> None:
        self.compiled, self.streams = compiled, streams
        self._inputs = [_Port(p.get_any_name()) for p in compiled.inputs]
        self._outputs = [_Port(p.get_any_name()) for p in compiled.outputs]
        self._local = threading.local()

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs named ``output_names`` for ``feeds`` {input name: array} (copies, safe to keep)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(feeds)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return [np.asarray(by_name[name]) for name in output_names]

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def get_providers(self) -> list[str]:
        return ["OpenVINOCPU"]


def create_openvino_session(path: Path, options: BackendOptions, entry: str) -> Any:
    """An `OpenVinoSession` for ``path``, or a load-aware pair of them when ``solo_threads`` asks for one.

    Args:
        path: The entry's ``model.onnx``.
        options: ``threads`` per concurrent batch, ``solo_threads`` (all cores), ``precision``
            (``fp32``, ``bf16``, ``int8``), ``cache_dir`` (OpenVINO's compiled-blob cache, "" = off).
        entry: ``name/version``, the cache's sub-folder.

    Raises:
        ConfigError: a device other than CPU.
    """
    from eca_serve.errors import ConfigError
    from eca_serve.runtime.onnx_backend import LoadAwareSession

    if options.device.is_cuda:
        raise ConfigError(f"the openvino backend serves on CPU only, not {options.device} (use onnxruntime there)")
    threads = options.threads
    if options.solo_threads > max(threads, 1):
        streams = max(1, options.solo_threads // max(threads, 1))
        solo = _compile(path, options, entry, threads=options.solo_threads, streams=1)
        return LoadAwareSession(solo, _compile(path, options, entry, threads=threads * streams, streams=streams))
    return _compile(path, options, entry, threads=threads, streams=1)


def _compile(path: Path, options: BackendOptions, entry: str, threads: int, streams: int) -> OpenVinoSession:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"NUM_STREAMS": streams, "INFERENCE_PRECISION_HINT": _PRECISION_HINT[options.precision]}
    if streams == 1:
        config["PERFORMANCE_HINT"] = "LATENCY"
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if options.cache_dir:
        folder = Path(options.cache_dir) / entry.replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        config["CACHE_DIR"] = str(folder)
    compiled = core.compile_model(str(path), "CPU", config)
    log.info("openvino %s compiled for CPU: %s, %d stream(s), %s threads", path, options.precision, streams, threads or "default")
    return OpenVinoSession(compiled, streams)
