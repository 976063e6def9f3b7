"""TorchScript and eager PyTorch backends (CPU or CUDA, optional fp16 on CUDA)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eca_serve.export.formats import readout_methods
from eca_serve.repository import EMBEDDING_OUTPUT, attention_output
from eca_serve.runtime.base import BackendOptions, Outputs

log = logging.getLogger(__name__)


def load_torchscript(path: Path, options: BackendOptions) -> Any:
    """Load ``model.pt`` onto the device and freeze it there (BN folding, inlined attributes)."""
    import torchvision  # noqa: F401  registers torchvision::nms / roi_align, which scripted detectors call

    module = torch.jit.load(str(path), map_location=options.device).eval()
    if options.fp16 and _is_cuda(options):
        module = module.half()
    return torch.jit.freeze(module, preserved_attrs=readout_methods(module))


def load_eager(config: Any, folder: Path, options: BackendOptions) -> nn.Module:
    """Rebuild the architecture from the entry's config and load ``weights.safetensors`` strictly."""
    from eca_serve.models import create_model

    kwargs = {k: v for k, v in config.build_kwargs.items() if k != "num_classes"}
    model = create_model(config.architecture, weights=folder / config.artifacts["weights"].file, **kwargs)
    model = model.to(options.device).eval()
    return model.half() if options.fp16 and _is_cuda(options) else model


class _TorchBase:
    def __init__(self, module: Any, options: BackendOptions, name: str) -> None:
        self.module, self.options, self.name = module, options, name
        self.device, self.kind = options.device, options.kind
        self.dtype = torch.float16 if options.fp16 and _is_cuda(options) else torch.float32
        if options.threads > 0:
            torch.set_num_threads(options.threads)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if _is_cuda(self.options):
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.dtype)


class TorchClassifier(_TorchBase):
    """Classifier through ``forward_with_embedding`` (one pass yields logits, embedding and attention), or
    ``forward_with_attention`` for a ``model.pt`` exported before classifiers had the embedding output."""

    def __init__(self, module: Any, options: BackendOptions, name: str) -> None:
        super().__init__(module, options, name)
        self.embeds = hasattr(module, "forward_with_embedding")

    def infer(self, batch: np.ndarray) -> Outputs:
        with torch.inference_mode():
            if self.embeds:
                logits, embedding, attention = self.module.forward_with_embedding(self._to_device(batch))
                out = {"logits": _numpy(logits), EMBEDDING_OUTPUT: _numpy(embedding)}
            else:
                logits, attention = self.module.forward_with_attention(self._to_device(batch))
                out = {"logits": _numpy(logits)}
        out.update({attention_output(k): _numpy(v) for k, v in attention.items()})
        return out


class TorchDetector(_TorchBase):
    """Detector through ``forward_with_attention``; all images of a call share one size."""

    def infer(self, images: list[np.ndarray]) -> list[Outputs]:
        with torch.inference_mode():
            detections, attention = self.module.forward_with_attention([self._to_device(i) for i in images])
        results = []
        for i, det in enumerate(detections):
            out = {k: _numpy(v) for k, v in det.items()}
            out.update({attention_output(k): _numpy(v[i : i + 1]) for k, v in attention.items()})
            results.append(out)
        return results


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.cpu().numpy()


def _is_cuda(options: BackendOptions) -> bool:
    return options.device.is_cuda
