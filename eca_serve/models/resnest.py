"""ResNeSt (Zhang et al., 2020): ResNet-D style network of split-attention bottlenecks.

State-dict layout equals the authors' ``resnest.torch`` models: a deep stem ``conv1.{0,1,3,4,6}`` +
``bn1``; blocks ``conv1, bn1, conv2 (SplitAttnConv2d: conv, bn0, fc1, bn1, fc2), conv3, bn3,
downsample.{1,2}`` (``downsample.0`` is the parameter-free average pool of ``avg_down``); ``fc``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import SplitAttnConv2d
from eca_serve.models.pooled import FeatureMapClassifier
from eca_serve.models.resnet import Stage, init_conv_bn


class ResNeStBottleneck(nn.Module):
    """1x1 -> split-attention 3x3 -> [avd average pool] -> 1x1 x4, plus the identity.

    Args:
        inplanes: Input channels.
        planes: Base width; the output has ``planes * 4`` channels.
        stride: 1 or 2; with ``avd`` the stride is taken by a 3x3 average pool after the 3x3 conv.
        downsample: Identity path module, or None.
        radix, cardinality, bottleneck_width: Split-attention options (group width =
            ``planes * bottleneck_width / 64 * cardinality``).
        avd: Average-pool downsampling in the branch (applies when ``stride > 1`` or ``is_first``).
        is_first: First block of a stage whose stride is 1 (the authors pass False for layer1).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *, radix: int,
                 cardinality: int, bottleneck_width: int, avd: bool, is_first: bool = False) -> None:
        super().__init__()
        width = int(planes * (bottleneck_width / 64.0)) * cardinality
        use_avd = avd and (stride > 1 or is_first)
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = SplitAttnConv2d(width, width, 3, 1 if use_avd else stride, 1, groups=cardinality, radix=radix)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if use_avd else nn.Identity()
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Block output [B, 4*planes, H', W']; appends the split weights [B, radix, width] to ``weights``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out, w = self.conv2.forward_with_weights(out)
        weights.append(w)
        out = self.bn3(self.conv3(self.avd_layer(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def forward(self, x: Tensor) -> Tensor:
        """Block output [B, 4*planes, H', W'] of ``x`` [B, C_in, H, W]."""
        return self.forward_collect(x, [])


class ResNeSt(FeatureMapClassifier, nn.Module):
    """ResNeSt classifier.

    Args:
        layers: Blocks per stage, e.g. (3, 4, 6, 3) for ResNeSt-50.
        num_classes: Size of ``fc``.
        stem_width: Width of the deep stem's first two convolutions (its output is twice that).
        widths: Base widths of the four stages.
        radix, cardinality, bottleneck_width, avd: Block options (see `ResNeStBottleneck`).
    """

    def __init__(self, layers: Sequence[int], *, num_classes: int = 1000, stem_width: int = 32,
                 widths: Sequence[int] = (64, 128, 256, 512), radix: int = 2, cardinality: int = 1,
                 bottleneck_width: int = 64, avd: bool = True) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ConfigError(f"ResNeSt needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        self.block_options = dict(radix=radix, cardinality=cardinality, bottleneck_width=bottleneck_width, avd=avd)
        self.conv1 = _deep_stem(stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width * 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self.inplanes = stem_width * 2
        self.layer1 = self._make_layer(widths[0], layers[0], 1)
        self.layer2 = self._make_layer(widths[1], layers[1], 2)
        self.layer3 = self._make_layer(widths[2], layers[2], 2)
        self.layer4 = self._make_layer(widths[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3] * 4
        self.fc = nn.Linear(self.num_features, num_classes)
        init_conv_bn(self)
        self.attention_layers = [n for n, m in self.named_modules() if isinstance(m, SplitAttnConv2d)]

    def _make_layer(self, planes: int, depth: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity(),
                nn.Conv2d(self.inplanes, planes * 4, 1, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        blocks = [ResNeStBottleneck(self.inplanes, planes, stride, downsample, **self.block_options)]
        self.inplanes = planes * 4
        blocks += [ResNeStBottleneck(self.inplanes, planes, 1, None, **self.block_options) for _ in range(1, depth)]
        return Stage(*blocks)

    def forward_features_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Last feature map [B, 4*widths[3], H/32, W/32]; appends each block's split weights to ``weights``."""
        x = self.layer1.forward_collect(self.maxpool(self.relu(self.bn1(self.conv1(x)))), weights)
        return self.layer4.forward_collect(self.layer3.forward_collect(self.layer2.forward_collect(x, weights), weights), weights)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits [B, num_classes] of the embedding [B, num_features]."""
        return self.fc(embedding)



def _deep_stem(width: int) -> nn.Sequential:
    """3x3/2 (3 -> w) -> BN -> ReLU -> 3x3 (w -> w) -> BN -> ReLU -> 3x3 (w -> 2w); keys 0, 1, 3, 4, 6."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width * 2, 3, 1, 1, bias=False),
    )

