"""Recognise an architecture (classifier or detector) from the keys and shapes of its state dict."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from eca_serve.errors import CheckpointError
from eca_serve.models.detection.detect_arch import detect_detector_architecture
from eca_serve.models.zoo import resnet_depth


def detect_architecture(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """Registry name and builder arguments that produce a model with this state dict's layout.

    Detectors (our own full checkpoints) are recognised first, then ResNet/MobileNetV2 classifiers.

    Kernel sizes and ``num_classes`` are left to `create_model`, which reads them from the weights.
    The ``arch`` entry of a checkpoint is not used: the authors' files are known to carry wrong ones.

    Raises:
        CheckpointError: the layout is not one of the zoo's.
    """
    detector = detect_detector_architecture(state)
    if detector is not None:
        return detector
    family = _detect_family(state)
    if family is not None:
        return family
    if "features.0.0.weight" in state and "classifier.1.weight" in state:
        return "eca_mobilenet_v2", {}
    if "conv1.weight" in state and "fc.weight" in state:
        return _detect_resnet(state)
    raise CheckpointError(
        "unrecognised layout: expected a ResNet (conv1/layer1..4/fc) or ECA-MobileNetV2 (features/classifier) "
        f"state dict; first keys: {list(state)[:5]}"
    )


def _detect_resnet(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    depth, blocks, bottleneck = resnet_depth(state)
    if depth is None:
        raise CheckpointError(f"ResNet with blocks per stage {blocks} (bottleneck={bottleneck}) is not in the zoo")
    prefix = "eca_" if any(".eca." in k for k in state) else "se_" if any(".se." in k for k in state) else ""
    kwargs: dict[str, Any] = {}
    widths = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5))
    if widths != (64, 128, 256, 512):
        kwargs["widths"] = widths
    stem = int(state["conv1.weight"].shape[0])
    if stem != 64:
        kwargs["stem_width"] = stem
    return f"{prefix}resnet{depth}", kwargs


def _detect_family(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]] | None:
    """ResNeSt (split-attention ``conv2.fc1`` tensors) or DGC (``_inactive_channels`` buffers), else None."""
    if "features.init_conv.weight" in state and any(k.endswith("_inactive_channels") for k in state):
        return "dgc_condensenet", {}
    if "layer1.0.conv1._inactive_channels" in state:
        return "dgc_resnet18", {}
    if "layer1.0.conv2.fc1.weight" in state and "conv1.0.weight" in state:
        blocks = resnet_depth(state)[1]
        names = {(3, 4, 6, 3): "resnest50", (3, 4, 23, 3): "resnest101"}
        if tuple(blocks) not in names:
            raise CheckpointError(f"ResNeSt with blocks per stage {blocks} is not in the zoo")
        return names[tuple(blocks)], {}
    return None
