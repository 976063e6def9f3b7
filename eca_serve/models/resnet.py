"""ResNet family with pluggable channel attention (ECA, SE or none).

State-dict layout equals the authors' ``eca_resnet.py`` (and torchvision's ResNet): ``conv1``, ``bn1``,
``layer1..layer4`` of blocks ``conv1, bn1, conv2, bn2, [conv3, bn3,] eca|se, downsample``, ``fc``.
The attention module sits after the last BN of the residual branch, before the addition.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import create_attn, eca_kernel_size
from eca_serve.models.pooled import PooledClassifier

NormLayer = Callable[[int], nn.Module]

# NOTE: the released checkpoints use these fixed per-stage kernels, not the paper's adaptive rule.
RELEASED_ECA_KERNELS: dict[int, tuple[int, int, int, int]] = {
    18: (3, 5, 7, 7),
    34: (3, 3, 5, 7),
    50: (3, 5, 5, 7),
    101: (3, 3, 5, 7),
    152: (3, 3, 5, 7),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class _AttentionBlock(nn.Module):
    """Shared residual logic: branch -> attention -> add identity -> ReLU.

    Subclasses define ``_branch(x)``. The attention module is registered as ``eca`` or ``se``
    (whichever is used; the other attribute is None) so that state-dict keys match the papers' code.
    """

    def __init__(self) -> None:
        super().__init__()
        self.eca = None
        self.se = None
        self.downsample = None
        self.relu = nn.ReLU(inplace=True)

    def _set_attention(self, name: str | None, channels: int, kwargs: dict[str, Any]) -> None:
        module = create_attn(name, channels, **kwargs)
        if module is not None:
            setattr(self, name, module)

    def _branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _identity(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Block output [B, C_out, H', W'] for input [B, C_in, H, W]."""
        out = self._branch(x)
        if self.eca is not None:
            out = self.eca(out)
        elif self.se is not None:
            out = self.se(out)
        return self.relu(out + self._identity(x))

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Like ``forward``; appends this block's attention weights [B, C_out] to ``weights``."""
        out = self._branch(x)
        if self.eca is not None:
            out, w = self.eca.forward_with_weights(out)
            weights.append(w)
        elif self.se is not None:
            out, w = self.se.forward_with_weights(out)
            weights.append(w)
        return self.relu(out + self._identity(x))


class Stage(nn.Sequential):
    """The blocks of one ResNet stage (a plain ``nn.Sequential`` to ``state_dict``)."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Like ``forward``; appends each block's attention weights [B, C] to ``weights``."""
        for block in self:
            x = block.forward_collect(x, weights)
        return x


class BasicBlock(_AttentionBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, attn_layer: str | None,
                 attn_kwargs: dict[str, Any], norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self._set_attention(attn_layer, planes, attn_kwargs)
        self.downsample = downsample

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_AttentionBlock):
    """1x1 -> 3x3 (stride here, as torchvision's "ResNet v1.5" and the authors' code) -> 1x1 x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, attn_layer: str | None,
                 attn_kwargs: dict[str, Any], norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self._set_attention(attn_layer, planes * self.expansion, attn_kwargs)
        self.downsample = downsample

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def _stage_kernel_sizes(k_size: int | Sequence[int] | None, stage_channels: Sequence[int]) -> list[int]:
    """Per-stage ECA kernels: a given list, one int for all stages, or the paper's adaptive rule."""
    if k_size is None:
        return [eca_kernel_size(c) for c in stage_channels]
    if isinstance(k_size, int):
        return [k_size] * len(stage_channels)
    ks = [int(k) for k in k_size]
    if len(ks) != len(stage_channels):
        raise ConfigError(f"k_size needs one kernel size per stage ({len(stage_channels)}), got {ks}")
    return ks


class ResNet(PooledClassifier, nn.Module):
    """ResNet with optional per-block channel attention.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Blocks per stage, e.g. [3, 4, 6, 3].
        num_classes: Size of the classification layer ``fc``.
        attn_layer: ``"eca"``, ``"se"`` or None.
        k_size: ECA kernel sizes: one per stage, one int for all, or None for the adaptive rule.
        se_reduction: SE reduction ratio.
        widths: Base widths (``planes``) of the four stages; (64, 128, 256, 512) is the standard net.
        stem_width: Output channels of the 7x7 stem.
        norm_layer: Normalisation factory (``nn.BatchNorm2d``; detectors pass a frozen BN).
        zero_init_last: Zero-initialise the last BN of each branch (training recipe option).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        attn_layer: str | None = None,
        k_size: int | Sequence[int] | None = None,
        se_reduction: int = 16,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        norm_layer: NormLayer | None = None,
        zero_init_last: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ConfigError(f"ResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = stem_width
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        kernels = _stage_kernel_sizes(k_size, [w * block.expansion for w in widths])
        stages = []
        for i, (width, depth) in enumerate(zip(widths, layers)):
            attn_kwargs = _attn_kwargs(attn_layer, kernels[i], se_reduction)
            stages.append(self._make_layer(block, width, depth, 1 if i == 0 else 2, attn_layer, attn_kwargs))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[3] * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self, zero_init_last)
        self.attention_layers = attention_layer_names(self)

    def _make_layer(
        self, block: Any, planes: int, depth: int, stride: int, attn_layer: str | None, attn_kwargs: dict
    ) -> Stage:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample, attn_layer, attn_kwargs, self._norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, depth):
            blocks.append(block(self.inplanes, planes, 1, None, attn_layer, attn_kwargs, self._norm_layer))
        return Stage(*blocks)

    def stem(self, x: Tensor) -> Tensor:
        """Stem: [B, 3, H, W] -> [B, stem_width, H/4, W/4]."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits [B, num_classes] of the embedding [B, num_features]."""
        return self.fc(embedding)

    def forward_features(self, x: Tensor) -> Tensor:
        """Last feature map [B, num_features, H/32, W/32] of an image batch [B, 3, H, W]."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes] of a normalised image batch [B, 3, H, W]."""
        return self.classify(self.pool(self.forward_features(x)))

    def forward_features_collect(self, x: Tensor, weights: list[Tensor]) -> list[Tensor]:
        """Stage outputs [layer1..layer4] of ``x`` [B, 3, H, W]; appends attention weights to ``weights``."""
        c2 = self.layer1.forward_collect(self.stem(x), weights)
        c3 = self.layer2.forward_collect(c2, weights)
        c4 = self.layer3.forward_collect(c3, weights)
        return [c2, c3, c4, self.layer4.forward_collect(c4, weights)]

    def embed_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Embedding [B, num_features] of ``x`` [B, 3, H, W]; appends attention weights to ``weights``."""
        return self.pool(self.forward_features_collect(x, weights)[3])


def _attn_kwargs(attn_layer: str | None, k: int, se_reduction: int) -> dict[str, Any]:
    if attn_layer == "eca":
        return {"k_size": k}
    if attn_layer == "se":
        return {"reduction": se_reduction}
    return {}


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) initialisation of every Conv2d, BatchNorm2d as the identity (weight 1, bias 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_weights(model: nn.Module, zero_init_last: bool) -> None:
    init_conv_bn(model)
    if zero_init_last:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def attention_layer_names(model: nn.Module) -> list[str]:
    """Module paths of every channel-attention module, in forward (registration) order."""
    from eca_serve.layers import EcaModule, SEModule

    return [name for name, m in model.named_modules() if isinstance(m, (EcaModule, SEModule))]

