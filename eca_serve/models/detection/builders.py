"""Registered ECA-ResNet-FPN detectors: ``{fasterrcnn,maskrcnn,retinanet}_eca_resnet{18,34,50,101}_fpn``.

Config representation (``model.config``): torchvision's ``GeneralizedRCNNTransform`` inside the model
normalises and resizes (shorter side ``min_size``, longer side at most ``max_size``), so ``preprocess``
says "nothing outside the model": ``resize=None``, ``crop=False``, ``mean=(0, 0, 0)``, ``std=(1, 1, 1)``;
the input is RGB float in [0, 1] at any size. The server resizes each image with Pillow to the working
size (`eca_serve.repository.model_input_size`) first, where the model's own resize is the identity.
``preprocess.input_size`` is the nominal square ``(min_size, min_size)`` (warm-up, profiling).
Every build argument lives in ``extra`` (so the config rebuilds the model); the model's own
normalisation is ``model.transform.image_mean``/``image_std`` (ImageNet's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from eca_serve.errors import CheckpointError, ConfigError
from eca_serve.models._categories import coco_categories
from eca_serve.models._config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, PreprocessConfig
from eca_serve.models._registry import register_model
from eca_serve.models.checkpoint import KeyReport, eca_kernel_sizes, read_checkpoint
from eca_serve.models.detection.backbone import eca_resnet_fpn_backbone, stage_kernel_sizes
from eca_serve.models.detection.models import EcaFasterRCNN, EcaMaskRCNN, EcaRetinaNet
from eca_serve.models.resnet import RELEASED_ECA_KERNELS
from eca_serve.models.zoo import k_size_from_checkpoint

DEPTHS = (18, 34, 50, 101)
# Kernels of the authors' released detectors (README); other depths use the classifiers' released ones.
_R50_KERNELS = {"fasterrcnn": (5, 5, 5, 5), "maskrcnn": (3, 3, 7, 7), "retinanet": (3, 3, 7, 7)}
_TITLES = {"fasterrcnn": "Faster R-CNN", "maskrcnn": "Mask R-CNN", "retinanet": "RetinaNet"}
_ROI_RESOLUTION = 7  # MultiScaleRoIAlign output size of torchvision's box branch


@dataclass(frozen=True)
class _Family:
    """What differs between the three detector families."""

    task: str
    head: str
    model_cls: type
    detections_per_img: int
    head_options: dict[str, int] = field(default_factory=dict)


# torchvision's R-CNN sampling/proposal counts (its defaults); small models on CPU train far faster with fewer.
_RCNN_SAMPLING = {"box_batch_size_per_image": 512, "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
                  "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000}

_FAMILIES: dict[str, _Family] = {
    "fasterrcnn": _Family("detection", "roi_heads.box_predictor.cls_score", EcaFasterRCNN, 100,
                          {"box_head_dim": 1024, **_RCNN_SAMPLING}),
    "maskrcnn": _Family("instance_segmentation", "roi_heads.box_predictor.cls_score", EcaMaskRCNN, 100,
                        {"box_head_dim": 1024, "mask_head_layers": 4, "mask_head_dim": 256, **_RCNN_SAMPLING}),
    "retinanet": _Family("detection", "head.classification_head.cls_logits", EcaRetinaNet, 300),
}


def default_kernel_sizes(architecture: str, depth: int) -> tuple[int, int, int, int]:
    """Per-stage ECA kernels of a detector: R50 per family (README), else the released classifiers'."""
    return _R50_KERNELS[architecture] if depth == 50 else RELEASED_ECA_KERNELS[depth]


_DEFAULT_K: Any = object()


def build_detector(
    name: str,
    architecture: str,
    depth: int,
    *,
    num_classes: int = 91,
    categories: Sequence[str] | None = None,
    k_size: Any = _DEFAULT_K,
    widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
    out_channels: int = 256,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    min_size: int = 800,
    max_size: int = 1333,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int | None = None,
    backbone_weights: str | Path | None = None,
    **head_options: int,
) -> nn.Module:
    """An ECA-ResNet-FPN detector in eval mode with ``model.config`` attached.

    Args:
        name: Registry name stored in the config.
        architecture: ``fasterrcnn``, ``maskrcnn`` or ``retinanet``.
        depth: Backbone depth (18, 34, 50, 101).
        num_classes: Classes including background (COCO: 91 with torchvision's index gaps).
        categories: One name per class; default COCO's for 91 classes, else ``__background__, class_1..``.
        k_size: ECA kernels per stage (default `default_kernel_sizes`), one int, or None (adaptive rule).
        widths, stem_width: Backbone stage widths and stem channels (narrow nets for small models).
        out_channels: FPN channels.
        trainable_layers: Backbone stages left trainable from layer4 (0..5), as torchvision.
        frozen_bn: FrozenBatchNorm2d (default) or trainable BatchNorm2d in the backbone.
        min_size, max_size: Resize bounds of the internal transform (shorter / longer side).
        score_thresh, nms_thresh, detections_per_img: Postprocessing (torchvision's ``box_*`` options for
            R-CNNs); ``detections_per_img`` defaults to 100 (R-CNN) or 300 (RetinaNet).
        backbone_weights: Classifier checkpoint to initialise the backbone body from.
        **head_options: ``box_head_dim`` (R-CNN, default 1024), torchvision's R-CNN sampling counts
            (``box_batch_size_per_image``, ``rpn_{pre,post}_nms_top_n_{train,test}``), ``mask_head_layers`` and ``mask_head_dim``
            (Mask R-CNN, default 4 x 256).

    Raises:
        ConfigError: options that do not apply or break a rule. CheckpointError: bad backbone weights.
    """
    family = _FAMILIES[architecture]
    heads = _head_options(name, family, head_options)
    check_detector_options(num_classes, min_size, max_size, score_thresh, nms_thresh)
    kernels = default_kernel_sizes(architecture, depth) if k_size is _DEFAULT_K else k_size
    backbone = eca_resnet_fpn_backbone(
        depth, k_size=kernels, for_retinanet=architecture == "retinanet", widths=widths, stem_width=stem_width,
        out_channels=out_channels, trainable_layers=trainable_layers, frozen_bn=frozen_bn,
    )
    post = {"min_size": min_size, "max_size": max_size, "score_thresh": score_thresh, "nms_thresh": nms_thresh,
            "detections_per_img": family.detections_per_img if detections_per_img is None else int(detections_per_img)}
    model = _assemble(architecture, backbone, num_classes, heads, post)
    extra = {
        "k_size": stage_kernel_sizes(backbone.body), "widths": [int(w) for w in widths],
        "stem_width": int(stem_width), "out_channels": int(out_channels), "trainable_layers": trainable_layers,
        "frozen_bn": bool(frozen_bn), **post, **heads,
    }
    model.config = detector_config(name, architecture, family.task, num_classes, categories, extra)
    if backbone_weights is not None:
        load_backbone_from_classifier(model, backbone_weights)
    return model.eval()


def _assemble(
    architecture: str, backbone: nn.Module, num_classes: int, heads: Mapping[str, int], post: Mapping[str, Any]
) -> nn.Module:
    """The torchvision detector class of ``architecture`` around ``backbone``, with our head sizes."""
    transform = {"min_size": post["min_size"], "max_size": post["max_size"],
                 "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    if architecture == "retinanet":
        return EcaRetinaNet(backbone, num_classes, score_thresh=post["score_thresh"], nms_thresh=post["nms_thresh"],
                            detections_per_img=post["detections_per_img"], **transform)
    roi_heads = build_roi_heads(architecture, backbone.out_channels, num_classes, heads)
    sampling = {k: heads[k] for k in _RCNN_SAMPLING}
    return _FAMILIES[architecture].model_cls(
        backbone, None, box_score_thresh=post["score_thresh"], box_nms_thresh=post["nms_thresh"],
        box_detections_per_img=post["detections_per_img"], **roi_heads, **sampling, **transform,
    )


def _head_options(name: str, family: _Family, given: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(given) - set(family.head_options))
    if unknown:
        allowed = sorted(family.head_options) or "none"
        raise ConfigError(f"{name} does not take {unknown}; its head options are {allowed}")
    options = {**family.head_options, **{k: int(v) for k, v in given.items()}}
    bad = {k: v for k, v in options.items() if v < 1}
    if bad:
        raise ConfigError(f"head sizes must be positive, got {bad}")
    return options


def check_detector_options(num_classes: int, min_size: int, max_size: int, score_thresh: float, nms_thresh: float) -> None:
    """Raise `ConfigError` for a class count, resize bounds or thresholds a detector cannot use."""
    if num_classes < 2:
        raise ConfigError(f"a detector needs num_classes >= 2 (background included), got {num_classes}")
    if not 0 < min_size <= max_size:
        raise ConfigError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if not (0.0 <= score_thresh <= 1.0 and 0.0 <= nms_thresh <= 1.0):
        raise ConfigError(f"score_thresh and nms_thresh must be in [0, 1], got {score_thresh}, {nms_thresh}")


def build_roi_heads(architecture: str, channels: int, num_classes: int, heads: Mapping[str, int]) -> dict[str, nn.Module]:
    """Box (and mask) heads of torchvision's classes, sized by ``heads``."""
    box_dim = heads["box_head_dim"]
    modules: dict[str, nn.Module] = {
        "box_head": TwoMLPHead(channels * _ROI_RESOLUTION**2, box_dim),
        "box_predictor": FastRCNNPredictor(box_dim, num_classes),
    }
    if architecture == "maskrcnn":
        mask_dim = heads["mask_head_dim"]
        modules["mask_head"] = MaskRCNNHeads(channels, [mask_dim] * heads["mask_head_layers"], 1)
        modules["mask_predictor"] = MaskRCNNPredictor(mask_dim, mask_dim, num_classes)
    return modules


def detector_config(
    name: str, architecture: str, task: str, num_classes: int, categories: Sequence[str] | None, extra: dict
) -> ModelConfig:
    """The `ModelConfig` of a detector: category names (COCO's for 91 classes), preprocessing, ``extra`` options."""
    if categories is None:
        names = coco_categories() if num_classes == 91 else detection_categories(num_classes)
    else:
        names = tuple(str(c) for c in categories)
    if len(names) != num_classes:
        raise ConfigError(f"got {len(names)} category names for {num_classes} classes (background included)")
    preprocess = PreprocessConfig(
        input_size=(extra["min_size"], extra["min_size"]), resize=None, crop=False,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )
    return ModelConfig(name=name, task=task, architecture=architecture, num_classes=num_classes,
                       categories=names, attention="eca", preprocess=preprocess, extra=extra)


def detection_categories(num_classes: int) -> tuple[str, ...]:
    """``__background__, class_1 .. class_{n-1}``: index 0 is the detectors' background class."""
    if num_classes < 2:
        raise ConfigError(f"a detector needs num_classes >= 2 (background included), got {num_classes}")
    return ("__background__",) + tuple(f"class_{i}" for i in range(1, num_classes))


def retinanet_num_classes(state: Mapping[str, Tensor]) -> int:
    """Classes of a RetinaNet state dict: classifier rows / anchors per location (from the box regressor)."""
    rows = int(state["head.classification_head.cls_logits.weight"].shape[0])
    anchors = int(state["head.regression_head.bbox_reg.weight"].shape[0]) // 4
    return rows // anchors


def load_backbone_from_classifier(detector: nn.Module, path: str | Path) -> int:
    """Initialise ``detector.backbone.body`` from a classifier checkpoint (the authors' ImageNet file or ours).

    The file is read with `read_checkpoint` (weights-only, ``module.`` stripped); the classifier head
    ``fc.*`` is dropped and every other tensor ``<key>`` goes to ``backbone.body.<key>``, BN running
    statistics included (into FrozenBatchNorm2d buffers). ``num_batches_tracked`` entries are ignored.

    Args:
        detector: A model from these builders.
        path: Classifier checkpoint of the same depth, widths and ECA kernels.

    Returns:
        Number of tensors copied (every tensor of the body's state dict).

    Raises:
        CheckpointError: unreadable file, or body tensors missing, unexpected or of another shape
            (an ECA kernel mismatch names both kernel lists).
    """
    ckpt = read_checkpoint(path)
    source = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("fc.") and not _is_counter(k)}
    body = detector.backbone.body
    target = body.state_dict()
    report = KeyReport(
        missing=[k for k in target if k not in source and not _is_counter(k)],
        unexpected=[k for k in source if k not in target],
        mismatched=[(k, tuple(t.shape), tuple(source[k].shape)) for k, t in target.items()
                    if k in source and tuple(source[k].shape) != tuple(t.shape)],
    )
    if not report.ok:
        raise CheckpointError(
            f"{Path(path).name} cannot initialise the backbone of {detector.config.name}: "
            f"{report.describe()}{_kernel_hint(source, body)}"
        )
    target.update(source)
    body.load_state_dict(target, strict=True)
    return len(source)


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _kernel_hint(source: Mapping[str, Tensor], body: nn.Module) -> str:
    found = eca_kernel_sizes(source)
    if not found:
        return ""
    try:
        kernels = k_size_from_checkpoint("resnet", found)  # any ResNet name: one kernel per stage
    except ConfigError:
        return ""
    model_kernels = stage_kernel_sizes(body)
    if kernels == model_kernels:
        return ""
    return f" | ECA kernel sizes differ: checkpoint k_size={kernels}, detector k_size={model_kernels}"


def _register(architecture: str, depth: int) -> None:
    name = f"{architecture}_eca_resnet{depth}_fpn"
    family = _FAMILIES[architecture]

    def builder(**kwargs: Any) -> nn.Module:
        return build_detector(name, architecture, depth, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    kernels = list(default_kernel_sizes(architecture, depth))
    builder.__doc__ = f"{_TITLES[architecture]} on ECA-ResNet-{depth}-FPN (default k_size={kernels})."
    if architecture == "retinanet":
        builder.num_classes_from_state = retinanet_num_classes  # read by create_model
    register_model(task=family.task, head=family.head, attention="eca")(builder)


def _register_all() -> None:
    for architecture in _FAMILIES:
        for depth in DEPTHS:
            _register(architecture, depth)


_register_all()
