"""Parameter and FLOP counts in the paper's units."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eca_serve.layers import EcaModule


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of a model at one input size.

    Attributes:
        params: Trainable parameters.
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
    """Multiply-adds of one forward pass on a [1, 3, H, W] input (half of PyTorch's FLOP count)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *input_size)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x if not _is_detector(model) else [x[0]])
    model.train(was_training)
    return counter.get_total_flops() // 2


def measure(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> ModelCost:
    """Parameters and MACs of ``model`` at ``input_size``."""
    params, eca = count_params(model)
    return ModelCost(params, eca, count_macs(model, input_size), tuple(input_size))


def _is_detector(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "task", "classification") != "classification"
