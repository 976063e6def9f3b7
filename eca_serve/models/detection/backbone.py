"""ECA-ResNet + FPN feature extractor for torchvision's detectors.

State-dict layout equals torchvision's ``BackboneWithFPN`` over a ResNet: ``body.conv1.weight``,
``body.layer1.0.eca.conv.weight``, ..., ``fpn.inner_blocks.0.0.weight``, ... (no ``fc``), so
inside a detector the keys read ``backbone.body.*`` / ``backbone.fpn.*`` as in torchvision's models.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from eca_serve.errors import ConfigError
from eca_serve.models.resnet import ResNet
from eca_serve.models.zoo import RESNET_LAYOUTS

# Freezing order of torchvision's ``_resnet_fpn_extractor``: the last ``trainable_layers`` stay trainable.
_STAGES_BY_TRAINABILITY = ("layer4", "layer3", "layer2", "layer1", "conv1")


class EcaResNetFPNBackbone(nn.Module):
    """A ResNet body (no classifier) followed by a Feature Pyramid Network.

    Args:
        body: The ResNet; its ``fc`` is replaced by ``nn.Identity`` (no state-dict entries).
        returned_layers: Stages fed to the FPN, 1-based: [1, 2, 3, 4] (R-CNN) or [2, 3, 4] (RetinaNet).
        out_channels: Channels of every pyramid level.
        extra_blocks: ``LastLevelMaxPool`` (R-CNN, adds ``pool``) or ``LastLevelP6P7`` (RetinaNet).

    Attributes:
        out_channels: Channels of every output level (torchvision's detectors read this).
        attention_layers: ECA module paths inside ``body`` (``layer1.0.eca``, ...), in forward order.
    """

    def __init__(
        self, body: ResNet, returned_layers: Sequence[int], out_channels: int, extra_blocks: ExtraFPNBlock
    ) -> None:
        super().__init__()
        returned = [int(i) for i in returned_layers]
        if not returned or min(returned) < 1 or max(returned) > 4:
            raise ConfigError(f"returned_layers must be stage numbers in 1..4, got {returned}")
        # NOTE: ResNet's exported classifier methods reference ``fc``; Identity keeps them scriptable
        # while the state dict holds no head (torchvision's IntermediateLayerGetter drops it instead).
        body.fc = nn.Identity()
        self.body = body
        stage_channels = [stage[-1].eca.channels for stage in (body.layer1, body.layer2, body.layer3, body.layer4)]
        self.fpn = FeaturePyramidNetwork(
            [stage_channels[i - 1] for i in returned], out_channels, extra_blocks=extra_blocks
        )
        self.returned_layers = returned
        self.out_channels = out_channels
        self.attention_layers = list(body.attention_layers)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Pyramid features of a normalised, padded batch.

        Args:
            x: Image batch [B, 3, H, W].

        Returns:
            Ordered ``{"0": [B, out_channels, H/s, W/s], ...}`` plus ``pool`` (R-CNN) or ``p6``, ``p7``
            (RetinaNet), finest level first.
        """
        return self.forward_with_attention(x)[0]

    @torch.jit.export
    def forward_with_attention(self, x: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """Pyramid features and the body's ECA weights from one pass.

        Args:
            x: Image batch [B, 3, H, W].

        Returns:
            ``(features as in forward, [weights [B, C_layer] per ECA module in attention_layers order])``.
        """
        weights: list[Tensor] = []
        stages = self.body.forward_features_collect(x, weights)
        selected: dict[str, Tensor] = OrderedDict()
        for i, stage in enumerate(self.returned_layers):
            selected[str(i)] = stages[stage - 1]
        return self.fpn(selected), weights


def freeze_stages(body: ResNet, trainable_layers: int) -> None:
    """Set ``requires_grad=False`` on every body parameter outside the last ``trainable_layers`` stages.

    Same rule as torchvision's ResNet detection backbones: 0 freezes all, 3 (default) trains
    layer2..layer4, 5 trains everything including the stem.
    """
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    trainable = list(_STAGES_BY_TRAINABILITY[:trainable_layers])
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trainable):
            param.requires_grad_(False)


def eca_resnet_fpn_backbone(
    depth: int,
    *,
    k_size: int | Sequence[int] | None,
    for_retinanet: bool = False,
    widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
    out_channels: int = 256,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
) -> EcaResNetFPNBackbone:
    """ECA-ResNet-``depth`` + FPN as torchvision builds its ResNet-FPN detectors.

    Args:
        depth: 18, 34, 50, 101 or 152.
        k_size: ECA kernel per stage (4 ints), one int for all, or None for the adaptive rule.
        for_retinanet: Feed C3..C5 and add P6/P7 from P5 (``LastLevelP6P7``); else C2..C5 and a
            max-pooled extra level (``LastLevelMaxPool``).
        widths: Base widths of the four stages.
        stem_width: Channels of the 7x7 stem.
        out_channels: FPN channels.
        trainable_layers: Stages left trainable, counted from layer4 (0..5).
        frozen_bn: ``FrozenBatchNorm2d`` (fixed ImageNet statistics, torchvision's choice with
            pretrained backbones) or a trainable ``BatchNorm2d`` (e.g. training from scratch).

    Returns:
        The backbone, with frozen stages already frozen.
    """
    if depth not in RESNET_LAYOUTS:
        raise ConfigError(f"backbone depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
    if out_channels < 1:
        raise ConfigError(f"out_channels must be positive, got {out_channels}")
    block, layers = RESNET_LAYOUTS[depth]
    norm_layer = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    body = ResNet(
        block, layers, num_classes=1, attn_layer="eca", k_size=k_size,
        widths=widths, stem_width=stem_width, norm_layer=norm_layer,
    )
    freeze_stages(body, trainable_layers)
    if for_retinanet:
        return EcaResNetFPNBackbone(body, [2, 3, 4], out_channels, LastLevelP6P7(out_channels, out_channels))
    return EcaResNetFPNBackbone(body, [1, 2, 3, 4], out_channels, LastLevelMaxPool())


def stage_kernel_sizes(body: ResNet) -> list[int]:
    """The ECA kernel size of each of the body's four stages (first block's module)."""
    return [int(stage[0].eca.k_size) for stage in (body.layer1, body.layer2, body.layer3, body.layer4)]
