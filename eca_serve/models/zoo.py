"""Registered classifier builders: ECA-ResNet-18..152 and ECA-MobileNetV2, with plain and SE comparators."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.models._categories import default_categories
from eca_serve.models._config import ModelConfig
from eca_serve.models._registry import register_model
from eca_serve.models.mobilenetv2 import EcaMobileNetV2, released_kernel_sizes
from eca_serve.models.resnet import RELEASED_ECA_KERNELS, BasicBlock, Bottleneck, ResNet

RESNET_LAYOUTS: dict[int, tuple[type, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def resnet_depth(state: Mapping[str, Tensor], prefix: str = "") -> tuple[int | None, list[int], bool]:
    """(depth or None, blocks per stage, bottleneck?) of the ResNet whose keys start with ``prefix``.

    The depth is the `RESNET_LAYOUTS` entry with those blocks per stage and block type, if any.
    """
    pattern = re.compile(re.escape(prefix) + r"layer([1-4])\.(\d+)\.")
    blocks = [0, 0, 0, 0]
    for key in state:
        match = pattern.match(key)
        if match:
            stage = int(match.group(1)) - 1
            blocks[stage] = max(blocks[stage], int(match.group(2)) + 1)
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    depth = next((d for d, (block, layers) in RESNET_LAYOUTS.items()
                  if list(layers) == blocks and (block.expansion == 4) == bottleneck), None)
    return depth, blocks, bottleneck


def _classifier_config(name: str, architecture: str, attention: str | None, num_classes: int, **extra: Any) -> ModelConfig:
    return ModelConfig(
        name=name,
        task="classification",
        architecture=architecture,
        num_classes=num_classes,
        categories=default_categories(num_classes),
        attention=attention,
        extra=extra,
    )


def build_resnet(
    name: str,
    depth: int,
    attention: str | None,
    *,
    num_classes: int = 1000,
    k_size: int | Sequence[int] | None = None,
    **kwargs: Any,
) -> ResNet:
    """A ResNet of ``depth`` with ``attention`` and its config attached as ``model.config``.

    ECA nets default to the released checkpoints' per-stage kernels (``RELEASED_ECA_KERNELS``);
    pass ``k_size=None`` explicitly for the paper's adaptive rule.
    """
    if depth not in RESNET_LAYOUTS:
        raise ConfigError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
    block, layers = RESNET_LAYOUTS[depth]
    model = ResNet(block, layers, num_classes=num_classes, attn_layer=attention, k_size=k_size, **kwargs)
    kernels = None
    if attention == "eca":
        kernels = [stage[0].eca.k_size for stage in (model.layer1, model.layer2, model.layer3, model.layer4)]
    model.config = _classifier_config(name, "resnet", attention, num_classes, k_size=kernels, **kwargs)
    return model


_DEFAULT_K: Any = object()


def _resnet_builder(name: str, depth: int, attention: str | None) -> None:
    def builder(*, k_size: Any = _DEFAULT_K, **kwargs: Any) -> nn.Module:
        if attention == "eca":
            kwargs["k_size"] = RELEASED_ECA_KERNELS[depth] if k_size is _DEFAULT_K else k_size
        elif k_size is not _DEFAULT_K:
            raise ConfigError(f"{name} has no ECA modules; k_size does not apply")
        return build_resnet(name, depth, attention, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"ResNet-{depth}" + (f" with {attention.upper()} attention." if attention else ".")
    register_model(task="classification", head="fc", attention=attention)(builder)


def _register_resnets() -> None:
    for depth in RESNET_LAYOUTS:
        for attention, prefix in ((None, ""), ("se", "se_"), ("eca", "eca_")):
            _resnet_builder(f"{prefix}resnet{depth}", depth, attention)


_register_resnets()


@register_model(task="classification", head="classifier.1", attention="eca")
def eca_mobilenet_v2(*, num_classes: int = 1000, k_size: Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """ECA-MobileNetV2 1.0x; ECA kernel 1 for blocks with nominal channels < 96, else 3 (released ``k13``)."""
    model = EcaMobileNetV2(num_classes=num_classes, k_size=k_size, **kwargs)
    kernels = list(k_size) if k_size is not None else released_kernel_sizes()
    model.config = _classifier_config("eca_mobilenet_v2", "mobilenet_v2", "eca", num_classes, k_size=kernels, **kwargs)
    return model


def k_size_from_checkpoint(name: str, kernels: dict[str, int]) -> list[int]:
    """Builder ``k_size`` argument equivalent to per-module kernels read from a checkpoint.

    ResNets take one kernel per stage (all blocks of a stage must agree); MobileNetV2 one per block.
    Detector paths (``backbone.body.layer1.0.eca``) are grouped like classifier paths (``layer1.0.eca``).
    """
    ordered = sorted(kernels.items(), key=lambda kv: _path_order(kv[0]))
    if name == "eca_mobilenet_v2":
        return [k for _, k in ordered]
    per_stage: dict[str, set[int]] = {}
    for path, k in ordered:
        per_stage.setdefault(_stage_of(path), set()).add(k)
    uneven = {stage: sorted(ks) for stage, ks in per_stage.items() if len(ks) > 1}
    if uneven:
        raise ConfigError(f"checkpoint ECA kernels differ within a stage: {uneven}")
    return [next(iter(per_stage[s])) for s in sorted(per_stage)]


def _stage_of(path: str) -> str:
    """``layerN`` of an ECA module path, with a detector's ``backbone.body.`` prefix removed."""
    prefix = "backbone.body."
    return (path[len(prefix):] if path.startswith(prefix) else path).split(".")[0]


def _path_order(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))
