"""Registry entries ``torchvision:{fasterrcnn,maskrcnn}_resnet{18,50}_fpn``: torchvision's detectors with
surgery on the backbone body.

The detector's own forward (image list, transform, RPN, ROI heads) cannot be traced by torch.fx, so
surgery rewrites ``backbone.body`` (torchvision's ``IntermediateLayerGetter`` over a ResNet), whose forward is a plain
chain of stages. The ``resnet50`` entries are torchvision's models (same modules and state-dict keys as
``torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None)``); the ``resnet18`` ones put
torchvision's ResNet-18 in the same FPN backbone (``resnet_fpn_backbone("resnet18")``), small enough for
CPU training and tests. All are built as our `EcaFasterRCNN` / `EcaMaskRCNN` subclasses for the
``forward_with_attention`` read-out that the export and serving use.

``create_model("torchvision:fasterrcnn_resnet50_fpn", num_classes=3, min_size=64, max_size=64,
surgery={"kind": "eca", "min_channels": 512})`` inserts ECA after every backbone convolution with >= 512
outputs; the resolved spec (explicit ``targets``, ``root="backbone.body"``) sits in
``config.extra["surgery"]``, which the export writes into ``config.json`` so the entry rebuilds the network.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.models._registry import register_model
from eca_serve.models.detection.builders import build_roi_heads, check_detector_options, detector_config
from eca_serve.models.detection.models import EcaFasterRCNN, EcaMaskRCNN
from eca_serve.models.surgery.graph import apply_surgery, gate_paths
from eca_serve.models.surgery.spec import resolve_spec

PREFIX = "torchvision:"
ROOT = "backbone.body"
_FAMILIES: dict[str, tuple[str, type]] = {"fasterrcnn": ("detection", EcaFasterRCNN),
                                           "maskrcnn": ("instance_segmentation", EcaMaskRCNN)}
DEPTHS = (18, 50)
_TORCHVISION_MASK_HEAD = {"mask_head_dim": 256, "mask_head_layers": 4}  # torchvision's default mask head and predictor
_HEAD = "roi_heads.box_predictor.cls_score"
# torchvision's R-CNN sampling/proposal counts (its defaults); CPU training and tests use fewer.
_SAMPLING = {"box_batch_size_per_image": 512, "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
             "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000}


class AttentionFPNBackbone(nn.Module):
    """torchvision's ``BackboneWithFPN`` (same ``body``/``fpn`` modules and keys) with an attention read-out.

    Attributes:
        out_channels: FPN channels (torchvision's detectors read this).
        attention_layers: Gate paths inside ``body`` (``layer4.0.conv1.eca``, ...), in the body's
            registration order; empty before surgery.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.body = backbone.body
        self.fpn = backbone.fpn
        self.out_channels: int = backbone.out_channels
        self.attention_layers: list[str] = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Pyramid features ``{"0": [B, C, H/4, W/4], ..., "pool": [B, C, H/64, W/64]}`` of a batch [B, 3, H, W]."""
        return self.fpn(self.body(x))

    @torch.jit.export
    def forward_with_attention(self, x: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Pyramid features (as ``forward``) and one weights tensor [B, C_layer] per ``attention_layers`` entry."""
        features, weights = self.body.forward_with_attention(x)
        ordered: list[Tensor] = []
        for name in self.attention_layers:
            ordered.append(weights[name])
        return self.fpn(features), ordered


def build_torchvision_detector(
    family: str, depth: int, *, num_classes: int = 91, categories: Sequence[str] | None = None, surgery: Mapping[str, Any] | None = None,
    min_size: int = 800, max_size: int = 1333, trainable_layers: int = 5, frozen_bn: bool = False,
    score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100, box_head_dim: int = 1024,
    **sampling: int,
) -> nn.Module:
    """torchvision's ``family`` detector over a ResNet-``depth``-FPN with random weights and ``surgery`` applied to ``backbone.body``, in eval mode.

    Args:
        family: ``fasterrcnn`` or ``maskrcnn``.
        depth: 18 or 50 (torchvision's ResNets).
        num_classes: Classes including background.
        categories: One name per class (default COCO's for 91, else ``__background__, class_1..``).
        surgery: A `SurgerySpec` as a dict (``root`` is always ``backbone.body``), targets given or chosen
            by ``min_channels``/``paths``; None: no attention (the read-out is then empty).
        min_size, max_size: Resize bounds of the detector's own transform.
        trainable_layers: Backbone stages left trainable from layer4 (torchvision's rule; 5 without weights).
        frozen_bn: ``FrozenBatchNorm2d`` (torchvision's choice with pretrained weights) or ``BatchNorm2d``
            (its choice without, the default here).
        score_thresh, nms_thresh, detections_per_img: torchvision's ``box_*`` postprocessing options.
        box_head_dim: Features of the box head (torchvision: 1024).
        **sampling: torchvision's proposal/sampling counts (keys of `_SAMPLING`).

    Returns:
        The detector with ``forward_with_attention``, ``attention_layers`` (body-relative gate paths),
        ``surgery_spec`` and ``config``.
    """
    from torchvision.models import resnet18, resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    arch = f"{family}_resnet{depth}_fpn"
    unknown = sorted(set(sampling) - set(_SAMPLING))
    if unknown:
        raise ConfigError(f"{PREFIX}{arch} does not take {unknown}; its sampling options are {sorted(_SAMPLING)}")
    check_detector_options(num_classes, min_size, max_size, score_thresh, nms_thresh)
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if box_head_dim < 1:
        raise ConfigError(f"box_head_dim must be positive, got {box_head_dim}")
    task, model_cls = _FAMILIES[family]
    body = (resnet50 if depth == 50 else resnet18)(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    backbone = AttentionFPNBackbone(_resnet_fpn_extractor(body, trainable_layers))
    counts = {**_SAMPLING, **{k: int(v) for k, v in sampling.items()}}
    post = {"min_size": min_size, "max_size": max_size, "score_thresh": score_thresh, "nms_thresh": nms_thresh,
            "detections_per_img": int(detections_per_img)}
    model = model_cls(backbone, None, min_size=min_size, max_size=max_size, box_score_thresh=score_thresh,
                      box_nms_thresh=nms_thresh, box_detections_per_img=int(detections_per_img), **counts,
                      **build_roi_heads(family, backbone.out_channels, num_classes,
                                        {**_TORCHVISION_MASK_HEAD, "box_head_dim": int(box_head_dim)}))
    spec = resolve_spec(model, {**surgery, "root": ROOT}) if surgery else None
    if spec is not None:
        apply_surgery(model, spec)
    else:
        model.surgery_spec = None
    backbone.attention_layers = model.attention_layers = gate_paths(model.backbone.body) if spec else []
    extra = {"trainable_layers": trainable_layers, "frozen_bn": bool(frozen_bn), "box_head_dim": int(box_head_dim),
             **post, **counts}
    if spec is not None:
        extra["surgery"] = spec.to_dict()
    config = detector_config(PREFIX + arch, arch, task, num_classes, categories, extra)
    model.config = config.replace(attention=spec.kind if spec else None)
    return model.eval()


def _register(family: str, depth: int) -> None:
    def builder(**kwargs: Any) -> nn.Module:
        return build_torchvision_detector(family, depth, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{PREFIX}{family}_resnet{depth}_fpn"
    builder.__doc__ = f"torchvision {family} on ResNet-{depth}-FPN (random weights), optionally with surgery on backbone.body."
    register_model(task=_FAMILIES[family][0], head=_HEAD, attention=None)(builder)


for _family in _FAMILIES:
    for _depth in DEPTHS:
        _register(_family, _depth)
