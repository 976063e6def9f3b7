"""The backend interface: one model artifact, one device, numpy in and out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from eca_serve.kinds import BackendChoice, Device, Precision

# Classifier outputs: {"logits": [N, K], "attention/<layer>": [N, C], "embedding": [N, D]} (no "embedding"
# from entries exported before classifiers had that output).
# Detector outputs per image: {"boxes": [D, 4], "labels": [D], "scores": [D], "masks"?: [D, 1, H, W],
# "attention/<layer>": [1, C]}.
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model.

    Attributes:
        kind: ``onnxruntime``, ``openvino``, ``torchscript`` or ``eager`` (``auto`` until
            `eca_serve.runtime.engines.entry_options` resolves it for an entry).
        device: ``cpu``, ``cuda`` or ``cuda:N``; a plain string is parsed into a `Device`.
        fp16: Half precision on CUDA (torch backends; ignored on CPU).
        threads: Intra-op threads of one run (0 = library default).
        solo_threads: CPU, ONNX Runtime only: when greater than ``threads``, a second session with
            this many threads takes every run that starts while no other run of the model is
            active, so a lone request gets all cores and concurrent ones get ``threads`` each
            (OpenVINO: an all-cores compiled model, and one with a stream per concurrent batch).
        precision: ``fp32``, ``bf16`` (OpenVINO on CPUs with AMX or AVX512_BF16) or ``int8`` (a QDQ
            INT8 entry as it is); see `eca_serve.runtime.engines.check_precision`.
        cache_dir: OpenVINO's compiled-blob cache folder (a sub-folder per entry); "" = no cache.
    """

    kind: BackendChoice = "onnxruntime"
    device: Device = Device("cpu")
    fp16: bool = False
    threads: int = 0
    solo_threads: int = 0
    precision: Precision = "fp32"
    cache_dir: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", Device(self.device))


class ClassifierBackend(Protocol):
    """Runs a classifier on a normalised batch."""

    name: str
    device: str

    def infer(self, batch: np.ndarray) -> Outputs:
        """Outputs for ``batch`` [N, 3, H, W] float32: logits [N, K], each layer's attention [N, C], embedding [N, D]."""
        ...


class DetectorBackend(Protocol):
    """Runs a detector on images of one size."""

    name: str
    device: str

    def infer(self, images: list[np.ndarray]) -> list[Outputs]:
        """Per-image outputs for RGB float32 images [3, H, W] in [0, 1] (one size per call)."""
        ...

