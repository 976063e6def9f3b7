"""Dynamic group convolution networks (Su et al., ECCV 2020): DGC-ResNet-18 and the CondenseNet-based
DGC network of the authors' released ImageNet file.

State-dict layouts equal the authors' ``dyresnet18`` and ``dydensenet`` (hellozhuo/dgc):
ResNet blocks ``conv1 (DGC), bn1, conv2 (DGC), bn2, downsample.0 (1x1 DGC), downsample.1.norm``;
CondenseNet ``features.init_conv``, ``features.denseblock_<i>.denselayer_<j>.conv_1`` (1x1 DGC) and
``.conv_2.{norm,conv}`` (grouped 3x3), ``bn_last``, ``classifier``.

Every DGC convolution yields two attention read-outs: ``<path>.saliency`` and ``<path>.keep``, both
[B, heads, C_in].
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import DynamicMultiHeadConv
from eca_serve.models.pooled import FeatureMapClassifier
from eca_serve.models.resnet import Stage, init_conv_bn

READOUTS = ("saliency", "keep")


def dgc_readout_names(model: nn.Module) -> list[str]:
    """``<path>.saliency`` and ``<path>.keep`` of every DGC convolution, in forward order."""
    return [f"{n}.{r}" for n, m in model.named_modules() if isinstance(m, DynamicMultiHeadConv) for r in READOUTS]


class NormOnly(nn.Module):
    """BN held as ``norm`` (the authors' key for the downsample path's normalisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class DgcBasicBlock(nn.Module):
    """Two 3x3 DGC convolutions (each normalises and rectifies its own input) and the identity.

    Args:
        inplanes, planes, stride: As a ResNet basic block.
        dgc: Options of `DynamicMultiHeadConv` (heads, squeeze_rate, gate_factor).
    """

    def __init__(self, inplanes: int, planes: int, stride: int, dgc: dict[str, Any]) -> None:
        super().__init__()
        self.conv1 = DynamicMultiHeadConv(inplanes, planes, 3, stride, 1, **dgc)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = DynamicMultiHeadConv(planes, planes, 3, 1, 1, **dgc)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(DynamicMultiHeadConv(inplanes, planes, 1, stride, 0, **dgc), NormOnly(planes))

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Block output [B, planes, H', W']; appends saliency and keep-mask of conv1, conv2, downsample."""
        out = self.relu(self.bn1(self.conv1.forward_collect(x, weights)))
        out = self.bn2(self.conv2.forward_collect(out, weights))
        identity = x
        if self.downsample is not None:
            identity = self.downsample[1](self.downsample[0].forward_collect(x, weights))
        return self.relu(out + identity)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_collect(x, [])


class DgcResNet(FeatureMapClassifier, nn.Module):
    """ResNet of `DgcBasicBlock` s with the standard 7x7 stem.

    Args:
        layers: Blocks per stage ((2, 2, 2, 2) for ResNet-18).
        num_classes: Size of ``fc``.
        widths: Stage widths.
        heads, squeeze_rate, gate_factor: DGC options.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), *, num_classes: int = 1000,
                 widths: Sequence[int] = (64, 128, 256, 512), heads: int = 4, squeeze_rate: int = 16,
                 gate_factor: float = 0.25) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ConfigError(f"DGC-ResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        dgc = dict(heads=heads, squeeze_rate=squeeze_rate, gate_factor=gate_factor)
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        stages, inplanes = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, layers)):
            blocks = [DgcBasicBlock(inplanes if j == 0 else width, width, 2 if i and not j else 1, dgc) for j in range(depth)]
            stages.append(Stage(*blocks))
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_bn(self)
        self.attention_layers = dgc_readout_names(self)

    def forward_features_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Last feature map [B, widths[3], H/32, W/32]; appends every DGC read-out to ``weights``."""
        x = self.layer1.forward_collect(self.maxpool(self.relu(self.bn1(self.conv1(x)))), weights)
        return self.layer4.forward_collect(self.layer3.forward_collect(self.layer2.forward_collect(x, weights), weights), weights)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits [B, num_classes] of the embedding [B, num_features]."""
        return self.fc(embedding)



class InitConv(nn.Conv2d):
    """The CondenseNet stem convolution (3x3, stride 2); ``forward_collect`` lets ``features`` loop."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        return self.forward(x)


class Transition(nn.AvgPool2d):
    """2x2 average pool between dense blocks (CondenseNet has no transition convolution)."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        return self.forward(x)


class GroupConv(nn.Module):
    """BN -> ReLU -> grouped 3x3 convolution (keys ``norm``, ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 1, 1, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.relu(self.norm(x)))


class DenseLayer(nn.Module):
    """1x1 DGC (C_in -> bottleneck * growth) -> grouped 3x3 (-> growth); output concatenated to the input."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int, group_3x3: int, dgc: dict[str, Any]) -> None:
        super().__init__()
        self.conv_1 = DynamicMultiHeadConv(in_channels, bottleneck * growth, 1, 1, 0, **dgc)
        self.conv_2 = GroupConv(bottleneck * growth, growth, group_3x3)

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """[B, C_in + growth, H, W] of ``x`` [B, C_in, H, W]; appends conv_1's read-outs."""
        return torch.cat([x, self.conv_2(self.conv_1.forward_collect(x, weights))], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_collect(x, [])


class DenseBlock(nn.Sequential):
    """``denselayer_<j>`` children, each adding ``growth`` channels."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        for layer in self:
            x = layer.forward_collect(x, weights)
        return x


class DgcCondenseNet(FeatureMapClassifier, nn.Module):
    """The authors' DGC network on CondenseNet: dense blocks of 1x1 DGC + grouped 3x3 layers.

    Args:
        stages: Dense layers per block (4, 6, 8, 10, 8).
        growth: Growth rate per block (8, 16, 32, 64, 128); the stem has ``2 * growth[0]`` channels.
        bottleneck: Width multiplier of the 1x1 convolution.
        group_3x3: Groups of the 3x3 convolutions.
        num_classes: Size of ``classifier``.
        heads, squeeze_rate, gate_factor: DGC options.
    """

    def __init__(self, stages: Sequence[int] = (4, 6, 8, 10, 8), growth: Sequence[int] = (8, 16, 32, 64, 128), *,
                 bottleneck: int = 4, group_3x3: int = 4, num_classes: int = 1000, heads: int = 4,
                 squeeze_rate: int = 16, gate_factor: float = 0.25) -> None:
        super().__init__()
        if len(stages) != len(growth):
            raise ConfigError(f"stages and growth need the same length, got {list(stages)} and {list(growth)}")
        dgc = dict(heads=heads, squeeze_rate=squeeze_rate, gate_factor=gate_factor)
        channels = 2 * growth[0]
        self.features = nn.Sequential()
        self.features.add_module("init_conv", InitConv(3, channels, 3, 2, 1, bias=False))
        for i, (depth, g) in enumerate(zip(stages, growth), start=1):
            block = DenseBlock()
            for j in range(1, depth + 1):
                block.add_module(f"denselayer_{j}", DenseLayer(channels, g, bottleneck, group_3x3, dgc))
                channels += g
            self.features.add_module(f"denseblock_{i}", block)
            if i < len(stages):
                self.features.add_module(f"transition_{i}", Transition(2, 2))
        self.bn_last = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.classifier = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        self.attention_layers = dgc_readout_names(self)

    def forward_features_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Rectified last feature map [B, C, H/32, W/32]; appends every DGC read-out to ``weights``."""
        for module in self.features:
            x = module.forward_collect(x, weights)
        return self.relu(self.bn_last(x))

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits [B, num_classes] of the embedding [B, num_features]."""
        return self.classifier(embedding)



def set_inactive_channels(model: nn.Module, progress: float) -> None:
    """Set every DGC convolution's dropped-channel count from the authors' schedule at ``progress``.

    Nothing is dropped during the first 1/12 of training; the count then grows linearly to
    ``round(C_in * (1 - gate_factor))``, reached at 3/4 of training and kept to the end (and so at
    inference, through the saved ``_inactive_channels`` buffer).

    Args:
        model: Any module containing `DynamicMultiHeadConv` s.
        progress: Fraction of training done, in [0, 1].
    """
    for m in model.modules():
        if isinstance(m, DynamicMultiHeadConv):
            m.set_inactive_channels(scheduled_inactive(m.in_channels, m.gate_factor, progress))


def scheduled_inactive(in_channels: int, gate_factor: float, progress: float) -> int:
    """Channels to drop at ``progress`` (0 before 1/12, linear to the final count at 3/4)."""
    final = in_channels * (1.0 - gate_factor)
    if progress <= 1.0 / 12:
        return 0
    if progress >= 3.0 / 4:
        return int(round(final))
    return int(round(final * 1.5 * (progress - 1.0 / 12)))


def lasso_term(attention: dict[str, Tensor]) -> Tensor:
    """The authors' lasso on saliency: the mean saliency of every head, summed over heads and layers."""
    terms = [w.mean(dim=(0, 2)).sum() for name, w in attention.items() if name.endswith(".saliency")]
    return torch.stack(terms).sum()

