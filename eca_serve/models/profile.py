"""Parameter and FLOP counts in the paper's units."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from eca_serve.layers import EcaModule


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of a model at one input size.

    Attributes:
        params: Trainable parameters (detectors: frozen stem/early stages and FrozenBatchNorm2d buffers
            excluded, which is how mmdetection counts and so how the ECA-Net paper's Table 4 reports them).
        attention_params: Trainable parameters inside ECA modules.
        macs: Multiply-adds of convolutions and linear layers for one image.
        input_size: (H, W) the MACs were counted at.
    """

    params: int
    attention_params: int
    macs: int
    input_size: tuple[int, int]

    @property
    def params_m(self) -> float:
        """Parameters / 2^20, as the ECA-Net README reports them (24.37 for ECA-ResNet-50)."""
        return self.params / 2**20

    @property
    def gflops(self) -> float:
        """Multiply-adds / 2^30: the paper's "FLOPs" unit."""
        return self.macs / 2**30


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, trainable parameters inside ECA modules)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    eca = sum(p.numel() for m in model.modules() if isinstance(m, EcaModule) for p in m.parameters())
    return total, eca


def count_macs(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> int:
    """Multiply-adds of one forward pass on a [1, 3, H, W] input (half of PyTorch's FLOP count).

    Only operators that ``FlopCounterMode`` knows are counted: convolutions (transposed included) and
    matrix products (linear layers). Detectors are called with a list of one zero image [3, H, W] and
    their own transform is told not to resize it, so the networks run at H x W (padded up to a
    multiple of 32, as always); torchvision's RoIAlign and NMS are not counted, and the RoI heads'
    share depends on how many proposals and detections the zero image yields.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _native_size(model, input_size), FlopCounterMode(display=False) as counter:
            model(x if not _is_detector(model) else [x[0]])
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@contextlib.contextmanager
def _native_size(model: nn.Module, input_size: tuple[int, int]) -> Iterator[None]:
    """Make a torchvision detector's ``GeneralizedRCNNTransform`` keep ``input_size`` while inside."""
    transform = getattr(model, "transform", None) if _is_detector(model) else None
    if transform is None:
        yield
        return
    saved = (transform.min_size, transform.max_size)
    # NOTE: resize scale = min(min_size / short side, max_size / long side) = 1 for these bounds.
    transform.min_size, transform.max_size = (min(input_size),), max(input_size)
    try:
        yield
    finally:
        transform.min_size, transform.max_size = saved


def measure(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> ModelCost:
    """Parameters and MACs of ``model`` at ``input_size``."""
    params, eca = count_params(model)
    return ModelCost(params, eca, count_macs(model, input_size), tuple(input_size))


def _is_detector(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "task", "classification") != "classification"
