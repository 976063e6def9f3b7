"""Split attention (ResNeSt, Zhang et al. 2020): a grouped 3x3 convolution whose radix splits are
weighted per channel by an r-softmax over the radix dimension.

State-dict layout equals the authors' ``SplAtConv2d``: ``conv``, ``bn0``, ``fc1`` (1x1 conv with bias),
``bn1``, ``fc2`` (1x1 conv with bias).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError


class SplitAttnConv2d(nn.Module):
    """Conv (C_in -> radix*C, groups cardinality*radix) -> BN -> ReLU -> split attention.

    The radix splits [B, C, H, W] are summed, globally pooled, passed through fc1 -> BN -> ReLU -> fc2
    and turned into per-split channel weights by an r-softmax over radix (sigmoid when radix is 1).
    The output is the weighted sum of the splits.

    Args:
        in_channels: Input channels C_in.
        channels: Output channels C.
        kernel_size, stride, padding, dilation: Of the grouped convolution.
        groups: Cardinality.
        radix: Number of splits R.
        reduction_factor: fc1 width is ``max(C_in * R // reduction_factor, min_inter)``.
        min_inter: Lower bound of the fc1 width (the authors' 32).
        norm_layer: Normalisation factory.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        radix: int = 2,
        reduction_factor: int = 4,
        min_inter: int = 32,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if radix < 1 or groups < 1 or channels % groups:
            raise ConfigError(f"split attention needs radix >= 1 and channels divisible by groups, got "
                              f"radix={radix} groups={groups} channels={channels}")
        inter = max(in_channels * radix // reduction_factor, min_inter)
        self.channels = channels
        self.radix = radix
        self.cardinality = groups
        self.conv = nn.Conv2d(in_channels, channels * radix, kernel_size, stride, padding, dilation,
                              groups=groups * radix, bias=False)
        self.bn0 = norm_layer(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=groups)
        self.bn1 = norm_layer(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=groups)

    def split_weights(self, logits: Tensor) -> Tensor:
        """Per-split channel weights [B, R, C] of fc2's output [B, R*C, 1, 1].

        fc2's channels are ordered (cardinality, radix, C/cardinality), as in the authors' rSoftMax.
        """
        b = logits.shape[0]
        if self.radix == 1:
            return torch.sigmoid(logits.reshape(b, 1, self.channels))
        grouped = logits.reshape(b, self.cardinality, self.radix, self.channels // self.cardinality)
        return torch.softmax(grouped.transpose(1, 2), dim=1).reshape(b, self.radix, self.channels)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Output [B, C, H', W'] and the split weights [B, R, C] that combined it."""
        x = self.relu(self.bn0(self.conv(x)))
        b, _, h, w = x.shape
        splits = x.reshape(b, self.radix, self.channels, h, w)
        gap = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        weights = self.split_weights(self.fc2(self.relu(self.bn1(self.fc1(gap)))))
        out = (splits * weights.reshape(b, self.radix, self.channels, 1, 1)).sum(dim=1)
        return out, weights

    def forward(self, x: Tensor) -> Tensor:
        """Output [B, C, H', W'] of an input [B, C_in, H, W]."""
        return self.forward_with_weights(x)[0]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, radix={self.radix}, cardinality={self.cardinality}"
