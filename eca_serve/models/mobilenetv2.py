"""MobileNetV2 with ECA, laid out as the authors' ``eca_mobilenetv2.py``.

Every inverted-residual block ends with its ECA module inside the ``conv`` Sequential:
``features.1.conv.3`` (expand ratio 1) and ``features.N.conv.4`` for N = 2..17; classifier ``classifier.1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import EcaModule
from eca_serve.models.pooled import PooledClassifier
from eca_serve.models.resnet import attention_layer_names

# (expand ratio t, nominal output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def released_kernel_sizes() -> list[int]:
    """Per-block ECA kernels of the released checkpoint: 1 where nominal c < 96, else 3.

    NOTE: upstream pull request #32 changed the rule from ``c <= 96`` to ``c < 96``; the released
    ``eca_mobilenetv2_k13`` weights follow ``c < 96``.
    """
    return [1 if c < 96 else 3 for _, c, n, _ in INVERTED_RESIDUAL_SETTING for _ in range(n)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going below 90% of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6, keys ``0.weight``, ``1.*``."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Same as ``forward``; it has no attention, so ``weights`` is untouched."""
        return self.forward(x)


class _ExpandBranch(nn.Sequential):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1 -> BN -> ECA (expand ratio > 1)."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        x = self[3](self[2](self[1](self[0](x))))
        x, w = self[4].forward_with_weights(x)
        weights.append(w)
        return x


class _DepthwiseBranch(nn.Sequential):
    """Depthwise 3x3 -> project 1x1 -> BN -> ECA (expand ratio 1)."""

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        x = self[2](self[1](self[0](x)))
        x, w = self[3].forward_with_weights(x)
        weights.append(w)
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2 block with ECA after the projection BN; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, k_size: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        tail = [nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), EcaModule(cout, k_size)]
        depthwise = ConvBNReLU(hidden, hidden, stride=stride, groups=hidden)
        if expand_ratio == 1:
            self.conv = _DepthwiseBranch(depthwise, *tail)
        else:
            self.conv = _ExpandBranch(ConvBNReLU(cin, hidden, kernel_size=1), depthwise, *tail)

    def forward(self, x: Tensor) -> Tensor:
        """Block output [B, C_out, H', W'] for [B, C_in, H, W]."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Like ``forward``; appends the block's ECA weights [B, C_out] to ``weights``."""
        out = self.conv.forward_collect(x, weights)
        if self.use_res_connect:
            return x + out
        return out


class EcaMobileNetV2(PooledClassifier, nn.Module):
    """ECA-MobileNetV2.

    Args:
        num_classes: Classifier outputs.
        width_mult: Channel multiplier (1.0 = the released model).
        k_size: 17 per-block ECA kernels; None = the released rule (`released_kernel_sizes`).
        dropout: Dropout before the classifier.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        k_size: Sequence[int] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        kernels = list(k_size) if k_size is not None else released_kernel_sizes()
        n_blocks = sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)
        if len(kernels) != n_blocks:
            raise ConfigError(f"k_size needs {n_blocks} per-block kernel sizes, got {len(kernels)}")
        cin = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, kernels[len(layers) - 1]))
                cin = cout
        layers.append(ConvBNReLU(cin, self.num_features, kernel_size=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        _init_weights(self)
        self.attention_layers = attention_layer_names(self)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits [B, num_classes] of the embedding [B, num_features] (dropout, then the linear layer)."""
        return self.classifier(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes] of a normalised image batch [B, 3, H, W]."""
        return self.classify(self.features(x).mean(dim=(2, 3)))

    def embed_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Embedding [B, num_features] (globally pooled features) of ``x`` [B, 3, H, W]; appends ECA weights."""
        for layer in self.features:
            x = layer.forward_collect(x, weights)
        return x.mean(dim=(2, 3))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
