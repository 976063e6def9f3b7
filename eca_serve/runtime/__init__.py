"""Inference backends behind one interface: ONNX Runtime, TorchScript, eager PyTorch."""

from eca_serve.runtime.base import BackendOptions, ClassifierBackend, DetectorBackend
from eca_serve.runtime.factory import KINDS, create_backend, warm_up

__all__ = ["KINDS", "BackendOptions", "ClassifierBackend", "DetectorBackend", "create_backend", "warm_up"]
