"""ONNX Runtime backend: CUDA execution provider on a GPU host, CPU otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.runtime.base import BackendOptions, Outputs

log = logging.getLogger(__name__)


def create_session(path: Path, options: BackendOptions) -> Any:
    """An InferenceSession on the requested device, falling back to CPU with a log line saying so."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # torchvision's mask-paste loop triggers harmless shape warnings per detection
    # Spinning worker threads burn the cores that image decoding and the HTTP server need between runs.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if options.threads > 0:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if options.device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = int(options.device.split(":")[1]) if ":" in options.device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        else:
            log.warning("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu); using CPU for %s", path)
    session = ort.InferenceSession(str(path), so, providers=providers)
    log.info("onnxruntime session %s runs on %s", path, session.get_providers()[0])
    return session


class OnnxClassifier:
    """Classifier graph: input [N, 3, H, W] -> logits and ``attention/<layer>`` outputs."""

    def __init__(self, session: Any, options: BackendOptions, name: str) -> None:
        self.session, self.name = session, name
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]

    def infer(self, batch: np.ndarray) -> Outputs:
        values = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.output_names, values))


class OnnxDetector(OnnxClassifier):
    """Detector graph: one image [3, H, W] per run; boxes, labels, scores, [masks], attention [1, C]."""

    def infer(self, images: list[np.ndarray]) -> list[Outputs]:
        return [super(OnnxDetector, self).infer(image) for image in images]
