"""Attention modules that surgery inserts: ECA and SE whose gate starts at exactly 1 (identity).

They subclass `EcaModule` and `SEModule`, so the attention taps find them by class, report their
kind (``"eca"``/``"se"``) and read their weights [B, C] in (0, 1) like the native layers.
"""

from __future__ import annotations

from torch import Tensor, nn

from eca_serve.errors import ConfigError
from eca_serve.layers import EcaModule, SEModule

INITS = ("identity", "paper")


def _gain(init: str) -> float:
    if init not in INITS:
        raise ConfigError(f"unknown surgery init {init!r}; choose one of {list(INITS)}")
    return 2.0 if init == "identity" else 1.0


class SurgicalEca(EcaModule):
    """ECA gate ``x * gain * sigmoid(conv1d(pool(x)))``.

    ``init="identity"``: the Conv1d weight starts at zero and ``gain`` is 2, so every channel is scaled
    by exactly 2 * sigmoid(0) = 1 and the network's output is unchanged until training moves the weight.
    NOTE: the paper's Conv1d has no bias, so a sigmoid gate cannot start at 1; doubling it keeps the
    read-out (``attention`` in (0, 1), 0.5 = "unchanged") and still lets a channel be damped to 0 or
    amplified up to 2x. ``init="paper"``: gain 1 and PyTorch's default Conv1d initialisation.

    Args:
        channels: Channels C of the feature map it scales.
        k_size: Odd kernel size; None for the paper's adaptive rule.
        init: ``"identity"`` or ``"paper"``.
    """

    def __init__(self, channels: int, k_size: int | None = None, init: str = "identity") -> None:
        super().__init__(channels, k_size)
        self.gain = _gain(init)
        if init == "identity":
            nn.init.zeros_(self.conv.weight)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled feature map [B, C, H, W] and the weights [B, C] in (0, 1) (scale = gain * weights)."""
        weights = self.attention(x)
        return x * (self.gain * weights).unsqueeze(-1).unsqueeze(-1), weights

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, C, H, W] scaled per channel by ``gain * weights``."""
        return x * (self.gain * self.attention(x)).unsqueeze(-1).unsqueeze(-1)


class SurgicalSE(SEModule):
    """SE gate ``x * gain * sigmoid(fc2(relu(fc1(pool(x)))))`` with a hidden width of ``hidden``.

    ``init="identity"``: ``fc2`` (weight and bias) starts at zero and ``gain`` is 2, so the gate is
    exactly 1 at first (the zero-initialised last layer of ReZero / Fixup); ``fc1`` keeps its random
    initialisation so ``fc2`` gets gradients from the first step. ``init="paper"``: gain 1, default init.

    Args:
        channels: Channels C of the feature map it scales.
        hidden: Width of the bottleneck (C / reduction, or Composer's ``latent_channels``).
        init: ``"identity"`` or ``"paper"``.
    """

    def __init__(self, channels: int, hidden: int, init: str = "identity") -> None:
        if hidden < 1:
            raise ConfigError(f"SE hidden width must be >= 1, got {hidden}")
        super().__init__(channels)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gain = _gain(init)
        if init == "identity":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled feature map [B, C, H, W] and the weights [B, C] in (0, 1) (scale = gain * weights)."""
        weights = self.attention(x)
        return x * (self.gain * weights).unsqueeze(-1).unsqueeze(-1), weights

    def forward(self, x: Tensor) -> Tensor:
        """``x`` [B, C, H, W] scaled per channel by ``gain * weights``."""
        return x * (self.gain * self.attention(x)).unsqueeze(-1).unsqueeze(-1)
