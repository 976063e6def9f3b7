"""Read-out of per-layer channel attention through the models' explicit ``forward_with_attention``.

Forward hooks are not used: they break ``torch.jit.script`` and ``torch.jit.trace``. Every model in
the zoo computes its logits and attention weights in one pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from eca_serve.layers import DynamicMultiHeadConv, EcaModule, SEModule, SplitAttnConv2d


@dataclass(frozen=True)
class AttentionLayer:
    """One channel-attention module.

    Attributes:
        name: Module path as in ``forward_with_attention``'s output, e.g. ``layer3.2.eca``.
        kind: ``"eca"``, ``"se"``, ``"resnest"`` (split attention) or ``"dgc"`` (dynamic group conv).
        channels: Channels C it weights (DGC: its input channels).
        k_size: ECA 1-D kernel size (None otherwise).
        shape: Per-image weight shape when it is not [C]: ResNeSt (radix, C), DGC (heads, C_in).
    """

    name: str
    kind: str
    channels: int
    k_size: int | None
    shape: tuple[int, ...] | None = None


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Attention modules of ``model`` in the order ``forward_with_attention`` returns them.

    Detectors name their backbone layers like classifiers (``layer1.0.eca``), so a ``body.`` or
    ``backbone.body.`` prefix is dropped.
    """
    found = []
    for path, module in model.named_modules():
        if isinstance(module, EcaModule):
            found.append(AttentionLayer(_short(path), "eca", module.channels, module.k_size))
        elif isinstance(module, SEModule):
            found.append(AttentionLayer(_short(path), "se", module.channels, None))
        elif isinstance(module, SplitAttnConv2d):
            found.append(AttentionLayer(_short(path), "resnest", module.channels, None, (module.radix, module.channels)))
        elif isinstance(module, DynamicMultiHeadConv):
            shape = (module.num_heads, module.in_channels)
            found += [AttentionLayer(f"{_short(path)}.{part}", "dgc", module.in_channels, None, shape)
                      for part in ("saliency", "keep")]
    return found


def _short(path: str) -> str:
    for prefix in ("backbone.body.", "body."):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


class AttentionOutputs(nn.Module):
    """Wraps a classifier so that ``forward`` returns logits, every attention layer's weights and the embedding.

    Used for export: the ONNX graph gets ``logits`` [B, num_classes], one output [B, C_i] per layer in
    ``names`` order, then ``embedding`` [B, D] (the pooled features the final layer maps to logits).

    Args:
        model: A classifier with ``forward_with_embedding(x) -> (logits, embedding, {name: weights})``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.attention_layers)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(logits [B, K], weights_1 [B, C_1], ..., weights_L [B, C_L], embedding [B, D]) for images [B, 3, H, W]."""
        logits, embedding, weights = self.model.forward_with_embedding(x)
        return (logits, *[weights[name] for name in self.names], embedding)
