"""torchvision's Faster R-CNN, Mask R-CNN and RetinaNet with an attention read-out.

Each class is the torchvision detector unchanged (``forward`` included) plus
``forward_with_attention``: the same eval pass, built from the model's own ``transform``,
``rpn``/``roi_heads`` (or RetinaNet's ``head``, ``anchor_generator`` and postprocessing), that also
returns the backbone's ECA weights.

NOTE: torchvision batches the images of one call into a zero-padded tensor (after normalisation),
and ECA pools over that whole tensor, so both the detections and the attention weights of an image
depend slightly on the other images of the call (exactly as plain ``forward`` does).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from eca_serve.models.pooled import name_weights


def _image_sizes(images: list[Tensor]) -> list[tuple[int, int]]:
    """(H, W) of each image [3, H, W], as torchvision's detectors record them before resizing."""
    sizes: list[tuple[int, int]] = []
    for img in images:
        torch._assert(img.dim() == 3, "expected images of shape [3, H, W]")
        # NOTE: no int(): under ONNX tracing the sizes must stay traced values, or the exported graph
        # bakes the example's size into the box/mask postprocessing.
        sizes.append((img.shape[-2], img.shape[-1]))
    return sizes


class _RCNNAttention:
    """``forward_with_attention`` shared by the two-stage detectors (mixed into nn.Module subclasses)."""

    @torch.jit.export
    def forward_with_attention(self, images: list[Tensor]) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections and backbone attention weights from one eval pass.

        Args:
            images: RGB float images [3, H_i, W_i] in [0, 1], any sizes.

        Returns:
            ``(detections, attention)``: detections exactly as ``forward`` returns them in eval mode
            (``boxes`` [N, 4] xyxy in input pixels, ``labels`` [N] int64, ``scores`` [N], and for
            Mask R-CNN ``masks`` [N, 1, H_i, W_i] probabilities); attention maps each ECA module path
            (``layer1.0.eca``, ... as in the classifiers) to weights [len(images), C_layer].
        """
        if self.training:
            raise RuntimeError("forward_with_attention runs in eval mode only; call model.eval()")
        original_sizes = _image_sizes(images)
        batch, _ = self.transform(images, None)
        features, weights = self.backbone.forward_with_attention(batch.tensors)
        proposals, _ = self.rpn(batch, features, None)
        detections, _ = self.roi_heads(features, proposals, batch.image_sizes, None)
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return detections, name_weights(self.attention_layers, weights)


class EcaFasterRCNN(_RCNNAttention, FasterRCNN):
    """torchvision ``FasterRCNN`` over an `EcaResNetFPNBackbone`.

    Attributes:
        attention_layers: ECA module paths of the backbone body, classifier-style (``layer1.0.eca``).
    """

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.attention_layers = list(backbone.attention_layers)


class EcaMaskRCNN(_RCNNAttention, MaskRCNN):
    """torchvision ``MaskRCNN`` over an `EcaResNetFPNBackbone`; same attribute as `EcaFasterRCNN`."""

    def __init__(self, backbone: nn.Module, num_classes: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.attention_layers = list(backbone.attention_layers)


class EcaRetinaNet(RetinaNet):
    """torchvision ``RetinaNet`` over an `EcaResNetFPNBackbone`; same attribute as `EcaFasterRCNN`."""

    def __init__(self, backbone: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.attention_layers = list(backbone.attention_layers)

    @torch.jit.export
    def forward_with_attention(self, images: list[Tensor]) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Detections (as ``forward`` in eval mode) and backbone attention weights; see `EcaFasterRCNN`."""
        if self.training:
            raise RuntimeError("forward_with_attention runs in eval mode only; call model.eval()")
        original_sizes = _image_sizes(images)
        batch, _ = self.transform(images, None)
        feature_dict, weights = self.backbone.forward_with_attention(batch.tensors)
        features = list(feature_dict.values())
        head_outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)
        detections = self._detect(features, head_outputs, anchors, batch.image_sizes)
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return detections, name_weights(self.attention_layers, weights)

    def _detect(
        self,
        features: list[Tensor],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Eval branch of ``RetinaNet.forward``: split outputs and anchors per level, then postprocess."""
        level_sizes = [f.size(2) * f.size(3) for f in features]
        anchors_per_location = head_outputs["cls_logits"].size(1) // sum(level_sizes)
        per_level = [hw * anchors_per_location for hw in level_sizes]
        split_outputs: dict[str, list[Tensor]] = {}
        for key in head_outputs:
            split_outputs[key] = list(head_outputs[key].split(per_level, dim=1))
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, image_sizes)
