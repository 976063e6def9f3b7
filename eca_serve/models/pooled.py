"""The zoo classifiers' shared read-out: logits, pooled features (the embedding) and attention in one pass.

Every classifier family ends the same way: global pooling of the last feature map gives the embedding
[B, D], and the final layer (the registry's ``head``, after dropout where the family has one) maps it to
logits. `PooledClassifier` writes ``forward_with_embedding`` and ``forward_with_attention`` once on top
of two family methods, so the families differ only where their networks differ.
"""

import torch
from torch import Tensor


class PooledClassifier:
    """Mixin for ``nn.Module`` classifiers; both methods are exported to TorchScript.

    A family defines:
        ``attention_layers``: layer paths, in the order ``embed_collect`` appends their weights.
        ``embed_collect(x, weights) -> [B, D]``: pooled, flattened last feature map of images
            [B, 3, H, W]; appends each attention layer's weights to ``weights``.
        ``classify(embedding) -> [B, K]``: dropout (identity in eval) and the final layer.
    """

    # NOTE: a real annotation (no `from __future__ import annotations` here): TorchScript reads it to type
    # the empty list of a network without attention
    attention_layers: list[str]

    def pool(self, x: Tensor) -> Tensor:
        """Embedding [B, C] of a feature map [B, C, h, w] through the family's ``avgpool``, flattened."""
        return torch.flatten(self.avgpool(x), 1)  # type: ignore[attr-defined]

    @torch.jit.export
    def forward_with_embedding(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Logits, embedding and per-layer attention weights from one forward pass.

        Args:
            x: Normalised image batch [B, 3, H, W].

        Returns:
            ``(logits [B, K], embedding [B, D], {layer path: weights [B, *item_shape]})``; the embedding
            is the final layer's input (not normalised) and the logits equal ``forward(x)``.
        """
        weights: list[Tensor] = []
        embedding = self.embed_collect(x, weights)  # type: ignore[attr-defined]
        return self.classify(embedding), embedding, name_weights(self.attention_layers, weights)  # type: ignore[attr-defined]

    @torch.jit.export
    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(logits [B, K], {layer path: weights})`` of ``forward_with_embedding`` without the embedding."""
        logits, _, attention = self.forward_with_embedding(x)
        return logits, attention


class FeatureMapClassifier(PooledClassifier):
    """A `PooledClassifier` whose ``forward_features_collect(x, weights)`` returns the last feature map
    [B, D, h, w] itself (DGC, ResNeSt): ``forward`` and ``embed_collect`` pool it; the family keeps ``classify``."""

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, num_classes] of a normalised image batch [B, 3, H, W]."""
        return self.classify(self.pool(self.forward_features_collect(x, [])))  # type: ignore[attr-defined]

    def embed_collect(self, x: Tensor, weights: list[Tensor]) -> Tensor:
        """Embedding [B, D] of ``x`` [B, 3, H, W]; appends the family's attention read-outs to ``weights``."""
        return self.pool(self.forward_features_collect(x, weights))  # type: ignore[attr-defined]


def name_weights(names: list[str], weights: list[Tensor]) -> dict[str, Tensor]:
    """``{names[i]: weights[i]}`` (TorchScript has no ``dict(zip(...))``)."""
    out: dict[str, Tensor] = {}
    for i in range(len(weights)):
        out[names[i]] = weights[i]
    return out
