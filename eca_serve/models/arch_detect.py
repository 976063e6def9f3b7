"""Recognise an architecture (classifier or detector) from the keys and shapes of its state dict: the one place
that reads a layout back into a registry name and builder arguments."""

from __future__ import annotations

import re
from typing import Any, Mapping

from torch import Tensor

from eca_serve.errors import CheckpointError
from eca_serve.models.detection.builders import DEPTHS, retinanet_num_classes
from eca_serve.models.zoo import resnet_depth

_BODY = "backbone.body."
_MASK_LAYER = re.compile(r"^roi_heads\.mask_head\.(\d+)\.0\.weight$")


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


def detect_detector_architecture(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]] | None:
    """Registry name and builder arguments that rebuild a detector with this state dict's layout.

    Recognises ``roi_heads.mask_predictor.*`` (Mask R-CNN), ``roi_heads.box_predictor.*``
    (Faster R-CNN) and ``head.classification_head.*`` (RetinaNet) over a ``backbone.body.*`` ResNet.
    The arguments include ``num_classes`` and ``k_size`` (consistent with what `create_model` reads).

    Args:
        state: A clean state dict (``module.`` already stripped).

    Returns:
        ``(name, kwargs)``, or None when the keys are not a detector's.

    Raises:
        CheckpointError: a detector whose backbone layout has no registered builder.
    """
    architecture = _family(state)
    if architecture is None or f"{_BODY}conv1.weight" not in state:
        return None
    depth = _depth(state)
    kwargs: dict[str, Any] = {"num_classes": _num_classes(architecture, state), **_backbone_kwargs(state)}
    if architecture != "retinanet":
        kwargs["box_head_dim"] = int(state["roi_heads.box_head.fc6.weight"].shape[0])
    if architecture == "maskrcnn":
        kwargs.update(_mask_head_kwargs(state))
    return f"{architecture}_eca_resnet{depth}_fpn", kwargs


def _family(state: Mapping[str, Tensor]) -> str | None:
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" in state:
        return "maskrcnn"
    if "roi_heads.box_predictor.cls_score.weight" in state:
        return "fasterrcnn"
    if "head.classification_head.cls_logits.weight" in state:
        return "retinanet"
    return None


def _depth(state: Mapping[str, Tensor]) -> int:
    depth, blocks, bottleneck = resnet_depth(state, _BODY)
    if depth in DEPTHS:
        return depth
    raise CheckpointError(
        f"detector backbone with blocks per stage {blocks} (bottleneck={bottleneck}) has no registered builder; "
        f"registered depths: {list(DEPTHS)}"
    )


def _num_classes(architecture: str, state: Mapping[str, Tensor]) -> int:
    if architecture == "retinanet":
        return retinanet_num_classes(state)
    return int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])


def _backbone_kwargs(state: Mapping[str, Tensor]) -> dict[str, Any]:
    kernels = [int(state[f"{_BODY}layer{i}.0.eca.conv.weight"].shape[-1]) for i in range(1, 5)]
    return {
        "k_size": kernels,
        "widths": tuple(int(state[f"{_BODY}layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)),
        "stem_width": int(state[f"{_BODY}conv1.weight"].shape[0]),
        "out_channels": int(state["backbone.fpn.inner_blocks.0.0.weight"].shape[0]),
        # NOTE: only trainable BatchNorm2d stores num_batches_tracked; FrozenBatchNorm2d has 4 buffers.
        "frozen_bn": f"{_BODY}bn1.num_batches_tracked" not in state,
    }


def _mask_head_kwargs(state: Mapping[str, Tensor]) -> dict[str, int]:
    layers = sorted(int(m.group(1)) for key in state if (m := _MASK_LAYER.match(key)))
    dims = {int(state[f"roi_heads.mask_head.{i}.0.weight"].shape[0]) for i in layers}
    if len(dims) != 1:
        raise CheckpointError(f"mask head layers of unequal widths {sorted(dims)} have no registered builder")
    return {"mask_head_layers": len(layers), "mask_head_dim": dims.pop()}
