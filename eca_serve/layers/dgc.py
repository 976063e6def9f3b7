"""Dynamic group convolution (DGC, Su et al., ECCV 2020): a multi-head convolution whose heads each
keep only their most salient input channels, chosen per image by a small saliency generator.

State-dict layout equals the authors' ``DynamicMultiHeadConv``: ``_inactive_channels`` (a [1] buffer:
how many input channels each head drops), ``norm`` (BN of the input), ``headconv_<i>.conv``,
``headconv_<i>.fc1`` (no bias), ``headconv_<i>.fc2`` (with bias).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from eca_serve.errors import ConfigError

_HEAD_KEY = re.compile(r"heads\.(\d+)\.")
_AUTHORS_KEY = re.compile(r"headconv_(\d+)\.")


class HeadConv(nn.Module):
    """One head: a saliency generator (fc1 -> ReLU -> fc2 -> ReLU on pooled features) and a convolution.

    Args:
        in_channels: Input channels C_in.
        out_channels: This head's output channels (C_out / heads).
        kernel_size, stride, padding: Of the head's convolution.
        squeeze_rate: fc1 width is C_in // squeeze_rate, the rate halved when C_in < 80 (authors' rule).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 squeeze_rate: int) -> None:
        super().__init__()
        rate = squeeze_rate // 2 if in_channels < 80 else squeeze_rate
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.fc1 = nn.Linear(in_channels, max(in_channels // rate, 1), bias=False)
        self.fc2 = nn.Linear(max(in_channels // rate, 1), in_channels, bias=True)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 1.0)  # start with every channel salient

    def saliency(self, pooled: Tensor) -> Tensor:
        """Non-negative channel saliency [B, C_in] of pooled features [B, C_in]."""
        return torch.relu(self.fc2(torch.relu(self.fc1(pooled))))

    def forward(self, x: Tensor, pooled: Tensor) -> Tensor:
        """This head's convolution [B, C_out/heads, H', W'] of ``x`` [B, C_in, H, W] (ungated)."""
        return self.conv(x)


def keep_mask(saliency: Tensor, inactive: Tensor) -> Tensor:
    """1.0 for the channels a head keeps, 0.0 for the ``inactive`` least salient ones (ties dropped too).

    As the authors' code: the threshold is the ``inactive``-th smallest saliency and every channel at
    or below it is dropped; nothing is dropped when ``inactive`` is 0. Written with sort and gather
    instead of ``topk(int(...))`` so that the count stays a tensor and exports as data, not a constant.

    Args:
        saliency: [B, C] saliency of one head.
        inactive: [1] float buffer holding the number of channels to drop (0 <= n < C).

    Returns:
        [B, C] float mask.
    """
    n = inactive.to(torch.long)
    ordered = saliency.sort(dim=1).values
    threshold = ordered.index_select(1, (n - 1).clamp(min=0))  # [B, 1]
    dropped = (saliency <= threshold) & (n > 0)
    return (~dropped).to(saliency.dtype)


class DynamicMultiHeadConv(nn.Module):
    """BN -> ReLU -> per-head saliency gating -> per-head convolution, outputs interleaved by head.

    Each head sees the whole input scaled by its own saliency (zero on its dropped channels) and
    produces C_out / heads channels; output channel ``j * heads + i`` is channel ``j`` of head ``i``
    (the authors' view/transpose after their grouped convolution).

    NOTE: the heads are a ``ModuleList`` (so TorchScript can loop over them); state-dict hooks rename
    ``heads.<i>.`` to and from the authors' ``headconv_<i>.``, so saved and loaded keys are theirs.

    Args:
        in_channels, out_channels: C_in and C_out (both divisible by ``heads``).
        kernel_size, stride, padding: Of every head's convolution.
        heads: Number of heads.
        squeeze_rate: Saliency generator reduction (halved below 80 input channels).
        gate_factor: Fraction of input channels each head keeps at the end of training.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 heads: int = 4, squeeze_rate: int = 16, gate_factor: float = 0.25) -> None:
        super().__init__()
        if in_channels % heads or out_channels % heads or not 0.0 < gate_factor <= 1.0:
            raise ConfigError(f"DGC needs channels divisible by heads and 0 < gate_factor <= 1, got in={in_channels} "
                              f"out={out_channels} heads={heads} gate_factor={gate_factor}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = heads
        self.gate_factor = gate_factor
        self.register_buffer("_inactive_channels", torch.zeros(1))
        self.norm = nn.BatchNorm2d(in_channels)
        self.heads = nn.ModuleList(
            HeadConv(in_channels, out_channels // heads, kernel_size, stride, padding, squeeze_rate) for _ in range(heads))
        self.register_state_dict_post_hook(_to_authors_keys)
        self.register_load_state_dict_pre_hook(_from_authors_keys)

    @torch.jit.ignore
    def set_inactive_channels(self, count: int) -> None:
        """Set how many input channels each head drops (the schedule's value; 0 disables gating)."""
        self._inactive_channels.fill_(float(min(max(count, 0), self.in_channels - 1)))

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Output [B, C_out, H', W'], saliency [B, heads, C_in] and keep-mask [B, heads, C_in] of ``x`` [B, C_in, H, W]."""
        x = torch.relu(self.norm(x))
        pooled = x.mean(dim=(2, 3))
        outs: list[Tensor] = []
        saliencies: list[Tensor] = []
        masks: list[Tensor] = []
        for head in self.heads:
            s = head.saliency(pooled)
            keep = keep_mask(s, self._inactive_channels)
            outs.append(head.conv(x * (s * keep).unsqueeze(-1).unsqueeze(-1)))
            saliencies.append(s)
            masks.append(keep)
        out = torch.stack(outs, dim=2).flatten(1, 2)  # [B, C_out/heads, heads, H', W'] -> channel j*heads + i
        return out, torch.stack(saliencies, dim=1), torch.stack(masks, dim=1)

    def forward_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Output [B, C_out, H', W']; appends saliency then keep-mask [B, heads, C_in] to ``weights``."""
        out, saliency, keep = self.forward_with_weights(x)
        weights.append(saliency)
        weights.append(keep)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Output [B, C_out, H', W'] of an input [B, C_in, H, W]."""
        return self.forward_with_weights(x)[0]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, heads={self.num_heads}, gate_factor={self.gate_factor}"


def _to_authors_keys(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    head_prefix = prefix + "heads."
    for key in [k for k in state if k.startswith(head_prefix)]:
        state[prefix + _HEAD_KEY.sub(r"headconv_\1.", key[len(prefix):], count=1)] = state.pop(key)


def _from_authors_keys(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for key in [k for k in state if k.startswith(prefix + "headconv_")]:
        state[prefix + _AUTHORS_KEY.sub(r"heads.\1.", key[len(prefix):], count=1)] = state.pop(key)
