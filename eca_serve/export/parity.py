"""Parity of exported artifacts against the eager model, as plain numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

# (logits [N, K], {layer: weights [N, C]}) as numpy arrays
ClassifierRun = tuple[np.ndarray, dict[str, np.ndarray]]


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted absolute differences against eager."""

    probabilities: float = 1e-4
    attention: float = 1e-4
    box_pixels: float = 0.5
    score: float = 1e-3
    mask: float = 1e-3


@dataclass
class ParityRow:
    """One backend at one input compared with eager; ``None`` where a quantity does not apply."""

    backend: str
    input_shape: list[int]
    max_abs_logits: float | None = None
    max_abs_probabilities: float | None = None
    max_abs_attention: float | None = None
    detections: dict[str, float | int] | None = None
    passed: bool = True
    problems: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    """Every backend at every checked input."""

    rows: list[ParityRow]
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "tolerance": asdict(self.tolerance), "rows": [asdict(r) for r in self.rows]}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] logits, computed stably in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def compare_classifier(backend: str, x: Tensor, reference: ClassifierRun, candidate: ClassifierRun, tol: Tolerance) -> ParityRow:
    """Max abs differences of logits, probabilities and attention between eager and a backend."""
    ref_logits, ref_attn = reference
    logits, attn = candidate
    row = ParityRow(backend, list(x.shape))
    row.max_abs_logits = float(np.abs(ref_logits - logits).max())
    row.max_abs_probabilities = float(np.abs(softmax(ref_logits) - softmax(logits)).max())
    missing = sorted(set(ref_attn) - set(attn))
    if missing:
        row.problems.append(f"missing attention outputs: {missing[:3]}")
    diffs = [float(np.abs(ref_attn[k] - attn[k]).max()) for k in ref_attn if k in attn]
    row.max_abs_attention = max(diffs, default=0.0)
    if row.max_abs_probabilities > tol.probabilities:
        row.problems.append(f"probabilities differ by {row.max_abs_probabilities:.2e} > {tol.probabilities:.0e}")
    if row.max_abs_attention > tol.attention:
        row.problems.append(f"attention differs by {row.max_abs_attention:.2e} > {tol.attention:.0e}")
    row.passed = not row.problems
    return row


def run_torch_classifier(fn: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]], x: Tensor) -> ClassifierRun:
    """Call a ``forward_with_attention``-like function and convert to numpy."""
    with torch.inference_mode():
        logits, attn = fn(x)
    return logits.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in attn.items()}


def run_onnx_classifier(session: object, x: Tensor, output_names: Sequence[str], layers: Sequence[str]) -> ClassifierRun:
    """Run an ONNX Runtime session whose outputs are ``[logits, attention...]``."""
    outputs = session.run(list(output_names), {session.get_inputs()[0].name: x.numpy()})
    return outputs[0], dict(zip(layers, outputs[1:]))
