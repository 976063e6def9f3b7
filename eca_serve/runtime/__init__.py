"""Inference backends behind one interface: ONNX Runtime, OpenVINO, TorchScript, eager PyTorch."""

from eca_serve.runtime.base import Backend, BackendOptions, Outputs, split_batch, stack_outputs
from eca_serve.runtime.factory import KINDS, create_backend, warm_up

__all__ = ["KINDS", "Backend", "BackendOptions", "Outputs", "create_backend", "split_batch",
           "stack_outputs", "warm_up"]
