"""Squeeze-and-Excitation (Hu et al., CVPR 2018), the ECA paper's main comparator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError


class SEModule(nn.Module):
    """SE block: global average pool -> FC(C, C/r) -> ReLU -> FC(C/r, C) -> sigmoid -> scale.

    The two fully connected layers are 1x1 convolutions with bias (``fc1``, ``fc2``).

    Args:
        channels: Number of input channels C.
        reduction: Reduction ratio r (the paper's default 16).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ConfigError(f"SE reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, 1)
        self.channels = channels
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def attention(self, x: Tensor) -> Tensor:
        """Channel weights [B, C] in (0, 1) of a feature map [B, C, H, W]."""
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(self.relu(self.fc1(pooled)))).flatten(1)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled feature map [B, C, H, W] and the weights [B, C] that scaled it."""
        weights = self.attention(x)
        return x * weights.unsqueeze(-1).unsqueeze(-1), weights

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` [B, C, H, W] by its attention weight."""
        return x * self.attention(x).unsqueeze(-1).unsqueeze(-1)
