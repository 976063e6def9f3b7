"""Efficient Channel Attention (Wang et al., CVPR 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """Kernel size of the paper's adaptive rule, k = |log2(C)/gamma + b/gamma|_odd.

    Implemented as the paper's Fig. 3 code: ``t = int(abs((log2(C) + b) / gamma))``,
    ``k = t if t is odd else t + 1``.

    Args:
        channels: Number of channels C (> 0).
        gamma: Slope of the rule.
        b: Offset of the rule.

    Returns:
        An odd kernel size >= 1, e.g. 3 for C=64, 5 for C=256 and 512, 7 for C=2048.
    """
    if channels <= 0:
        raise ConfigError(f"channels must be positive, got {channels}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class EcaModule(nn.Module):
    """ECA: global average pool -> Conv1d(1, 1, k) across channels -> sigmoid -> scale.

    The state dict holds one tensor, ``conv.weight`` of shape [1, 1, k] (no bias), as in the
    authors' ``eca_layer``. The computation avoids ``expand_as`` and transposes so that it exports
    cleanly to TorchScript and ONNX.

    Args:
        channels: Number of input channels C. Used for the adaptive rule when ``k_size`` is None.
        k_size: Odd 1-D kernel size; None selects ``eca_kernel_size(channels)``.
    """

    def __init__(self, channels: int, k_size: int | None = None) -> None:
        super().__init__()
        k = eca_kernel_size(channels) if k_size is None else int(k_size)
        if k < 1 or k % 2 == 0:
            raise ConfigError(f"ECA kernel size must be a positive odd integer, got {k}")
        self.channels = channels
        self.k_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def attention(self, x: Tensor) -> Tensor:
        """Channel weights of a feature map.

        Args:
            x: Feature map [B, C, H, W].

        Returns:
            Weights [B, C] in (0, 1).
        """
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # [B, 1, C]: channels become the 1-D axis
        return torch.sigmoid(self.conv(pooled)).squeeze(1)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled feature map [B, C, H, W] and the weights [B, C] that scaled it."""
        weights = self.attention(x)
        return x * weights.unsqueeze(-1).unsqueeze(-1), weights

    def forward(self, x: Tensor) -> Tensor:
        """Scale each channel of ``x`` [B, C, H, W] by its attention weight."""
        return x * self.attention(x).unsqueeze(-1).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_size={self.k_size}"
