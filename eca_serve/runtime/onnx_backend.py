"""ONNX Runtime backend: CUDA execution provider on a GPU host, CPU otherwise."""

from __future__ import annotations

import dataclasses
import logging
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from eca_serve.runtime.base import BackendOptions, Outputs

log = logging.getLogger(__name__)


def create_session(path: Path, options: BackendOptions, fixed_shapes: bool = True) -> Any:
    """A session for ``options``: a `LoadAwareSession` when ``solo_threads`` asks for one, else plain.

    Args:
        fixed_shapes: False for a graph whose inputs change size from run to run (detectors: one
            image at its own size), which turns off ONNX Runtime's per-shape memory patterns.
    """
    if options.solo_threads > max(options.threads, 1) and not options.device.is_cuda:
        solo = _create_session(path, dataclasses.replace(options, threads=options.solo_threads), fixed_shapes)
        return LoadAwareSession(solo, _create_session(path, options, fixed_shapes))
    return _create_session(path, options, fixed_shapes)


class LoadAwareSession:
    """Two sessions of one model chosen per run by how many runs are active.

    A run that starts while no other run is active gets ``solo`` (all cores): lowest latency for a
    lone request. A run that starts next to another gets ``shared`` (its share of the cores): under
    load, concurrent single-threaded runs never wait at an intra-op barrier for a thread the OS gave
    to image decoding. Measured on 2 cores, ECA-MobileNetV2 at batch 1: 152-180 img/s for one
    2-thread run, 195 img/s for two concurrent 1-thread runs, 117-178 for one shared 2-thread
    session. Costs a second copy of the weights.
    """

    def __init__(self, solo: Any, shared: Any) -> None:
        self.solo, self.shared = solo, shared
        self._lock = threading.Lock()
        self._running = 0
        self._pinned: Any = None

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            session = self._pinned or (self.solo if self._running == 0 else self.shared)
            self._running += 1
        try:
            return session.run(output_names, feeds)
        finally:
            with self._lock:
                self._running -= 1

    @contextmanager
    def pinned(self, session: Any) -> Iterator[None]:
        """Every run uses ``session`` inside the block (warm-up of each member)."""
        self._pinned = session
        try:
            yield
        finally:
            self._pinned = None

    def get_inputs(self) -> list[Any]:
        return self.shared.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self.shared.get_outputs()

    def get_providers(self) -> list[str]:
        return self.shared.get_providers()


def _create_session(path: Path, options: BackendOptions, fixed_shapes: bool = True) -> Any:
    """An InferenceSession on the requested device, falling back to CPU with a log line saying so."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A memory pattern is planned and kept per input shape: with photos of every size it only grows
    # (measured, Mask R-CNN on 4 photo sizes: 485 MiB RSS with patterns, 388 without, same latency).
    so.enable_mem_pattern = fixed_shapes
    so.log_severity_level = 3  # torchvision's mask-paste loop triggers harmless shape warnings per detection
    # Spinning workers: a sleeping thread wakes slowly on the VM (MobileNetV2, one run on 2 threads:
    # 7.0 ms without spinning, 5.5 ms with). Forcing the spin to stop at the end of each run made
    # runs flip between 5.7 and 10 ms for seconds at a time, so it is left to ORT's own spin limit.
    # Under load, concurrent runs use the single-threaded shared session, which has no workers.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    # Denormal activations make some photos' runs much slower on x86 (measured 5.9 -> 9.9 ms for one
    # MobileNetV2 photo); flushing them to zero changes outputs by far less than export parity allows.
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if options.threads > 0:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if options.device.is_cuda:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": options.device.index}))
        else:
            log.warning("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); using CPU for %s", path)
    session = ort.InferenceSession(str(path), so, providers=providers)
    log.info("onnxruntime session %s runs on %s", path, session.get_providers()[0])
    return session


class OnnxClassifier:
    """Classifier graph: input [N, 3, H, W] -> logits and ``attention/<layer>`` outputs."""

    def __init__(self, session: Any, options: BackendOptions, name: str) -> None:
        self.session, self.name, self.kind = session, name, options.kind
        self.precision = options.precision
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    def variants(self) -> list[AbstractContextManager[None]]:
        """One context per member session, inside which every run uses that member (for warm-up)."""
        if isinstance(self.session, LoadAwareSession):
            return [self.session.pinned(self.session.solo), self.session.pinned(self.session.shared)]
        return [nullcontext()]

    def infer(self, batch: np.ndarray) -> Outputs:
        values = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.output_names, values))


class OnnxDetector(OnnxClassifier):
    """Detector graph: one image [3, H, W] per run; boxes, labels, scores, [masks], attention [1, C]."""

    def infer(self, images: list[np.ndarray]) -> list[Outputs]:
        return [super(OnnxDetector, self).infer(image) for image in images]
