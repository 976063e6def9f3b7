"""Registered builders of the related channel-attention families: ResNeSt and dynamic group convolution."""

from __future__ import annotations

from typing import Any

from torch import nn

from eca_serve.models._config import PreprocessConfig
from eca_serve.models._registry import register_model
from eca_serve.models.dgc import DgcCondenseNet, DgcResNet
from eca_serve.models.resnest import ResNeSt
from eca_serve.models.zoo import _classifier_config

# NOTE: the authors evaluate ResNeSt-101 at 256 px (crop ratio 0.875), ResNeSt-50 at 224.
_RESNEST_101_INPUT = PreprocessConfig(input_size=(256, 256), resize=292)


def _resnest(name: str, layers: tuple[int, ...], deep_stem: int, num_classes: int, **kwargs: Any) -> nn.Module:
    kwargs.setdefault("stem_width", deep_stem)
    model = ResNeSt(layers, num_classes=num_classes, **kwargs)
    model.config = _classifier_config(name, "resnest", "resnest", num_classes, **kwargs)
    return model


@register_model(task="classification", head="fc", attention="resnest")
def resnest50(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNeSt-50: radix 2, cardinality 1, bottleneck width 64, deep stem 32, avg_down, avd."""
    return _resnest("resnest50", (3, 4, 6, 3), 32, num_classes, **kwargs)


@register_model(task="classification", head="fc", attention="resnest")
def resnest101(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNeSt-101: as ResNeSt-50 with (3, 4, 23, 3) blocks and a deep stem of width 64."""
    model = _resnest("resnest101", (3, 4, 23, 3), 64, num_classes, **kwargs)
    model.config = model.config.replace(preprocess=_RESNEST_101_INPUT)
    return model


@register_model(task="classification", head="fc", attention="dgc")
def dgc_resnet18(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """ResNet-18 with dynamic multi-head convolutions (heads 4, squeeze rate 16, gate factor 0.25)."""
    model = DgcResNet((2, 2, 2, 2), num_classes=num_classes, **kwargs)
    model.config = _classifier_config("dgc_resnet18", "dgc_resnet", "dgc", num_classes, **kwargs)
    return model


@register_model(task="classification", head="classifier", attention="dgc")
def dgc_condensenet(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """The authors' ImageNet DGC network: CondenseNet stages 4-6-8-10-8, growth 8-16-32-64-128, heads 4."""
    model = DgcCondenseNet(num_classes=num_classes, **kwargs)
    model.config = _classifier_config("dgc_condensenet", "dgc_condensenet", "dgc", num_classes, **kwargs)
    return model
