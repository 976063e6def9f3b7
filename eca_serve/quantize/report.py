"""INT8 against FP32 on the same inputs: top-1, agreement, probability and attention error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """What the INT8 graph changes, in the units of `eca_serve.repository.QuantizationSpec`.

    Attributes:
        images: Number of compared images N.
        top1_fp32: Percent correct of the FP32 graph (None without labels).
        top1_int8: Percent correct of the INT8 graph (None without labels).
        agreement: Percent of images with the same top-1 class.
        max_abs_prob_diff: Largest |softmax difference| over images and classes.
        attention_per_layer: Output name -> largest |attention difference| over images and channels.
        mean_abs_attention_diff: Mean |attention difference| over every layer, image and channel.
    """

    images: int
    top1_fp32: float | None
    top1_int8: float | None
    agreement: float
    max_abs_prob_diff: float
    attention_per_layer: dict[str, float]
    mean_abs_attention_diff: float | None

    @property
    def drop(self) -> float:
        """Top-1 drop in percentage points; without labels the disagreement, which bounds it."""
        if self.top1_fp32 is None or self.top1_int8 is None:
            return round(100.0 - self.agreement, 4)
        return round(self.top1_fp32 - self.top1_int8, 4)

    @property
    def max_abs_attention_diff(self) -> float | None:
        return max(self.attention_per_layer.values()) if self.attention_per_layer else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """float64 [N, K] probabilities of logits [N, K] (max-subtracted)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def compare(fp32: dict[str, np.ndarray], int8: dict[str, np.ndarray], labels: np.ndarray | None,
            attention_outputs: list[str]) -> Comparison:
    """Compare two graphs' outputs on the same N images.

    Args:
        fp32: Output name -> array; ``logits`` [N, K] and each attention output [N, C].
        int8: The same names for the INT8 graph.
        labels: int64 [N] true classes, or None.
        attention_outputs: The attention output names to compare.
    """
    top_fp32, top_int8 = fp32["logits"].argmax(1), int8["logits"].argmax(1)
    diffs = {name: np.abs(int8[name].astype(np.float64) - fp32[name]) for name in attention_outputs}
    return Comparison(
        images=len(top_fp32),
        top1_fp32=_percent(top_fp32 == labels) if labels is not None else None,
        top1_int8=_percent(top_int8 == labels) if labels is not None else None,
        agreement=_percent(top_fp32 == top_int8),
        max_abs_prob_diff=float(np.abs(softmax(int8["logits"]) - softmax(fp32["logits"])).max()),
        attention_per_layer={name: float(d.max()) for name, d in diffs.items()},
        mean_abs_attention_diff=float(np.mean(np.concatenate([d.ravel() for d in diffs.values()]))) if diffs else None,
    )


def _percent(hits: np.ndarray) -> float:
    return round(100.0 * float(np.mean(hits)), 4)
