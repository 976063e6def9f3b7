"""Parity of exported artifacts against the eager model, as plain numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from eca_serve.repository import EMBEDDING_OUTPUT, attention_output

# (logits [N, K], {layer: weights [N, C]}, embedding [N, D] or None) as numpy arrays
ClassifierRun = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted absolute differences against eager (``embedding``: relative to the largest
    |value| of eager's embedding when that exceeds 1, since pooled features are not normalised)."""

    probabilities: float = 1e-4
    attention: float = 1e-4
    embedding: float = 1e-4
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
    max_abs_embedding: float | None = None
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
    """Max abs differences of logits, probabilities, attention and embedding between eager and a backend."""
    ref_logits, ref_attn, ref_embedding = reference
    logits, attn, embedding = candidate
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
    if ref_embedding is not None:
        _compare_embedding(row, ref_embedding, embedding, tol.embedding)
    row.passed = not row.problems
    return row


def _compare_embedding(row: ParityRow, reference: np.ndarray, candidate: np.ndarray | None, tol: float) -> None:
    if candidate is None or candidate.shape != reference.shape:
        row.problems.append(f"embedding {None if candidate is None else list(candidate.shape)}, expected {list(reference.shape)}")
        return
    row.max_abs_embedding = float(np.abs(reference - candidate).max())
    limit = tol * max(1.0, float(np.abs(reference).max()))
    if row.max_abs_embedding > limit:
        row.problems.append(f"embedding differs by {row.max_abs_embedding:.2e} > {limit:.1e}")


def run_torch_classifier(fn: Callable[[Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]], x: Tensor) -> ClassifierRun:
    """Call a ``forward_with_embedding``-like function and convert to numpy."""
    with torch.inference_mode():
        logits, embedding, attn = fn(x)
    return (logits.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in attn.items()},
            embedding.float().cpu().numpy())


def run_onnx_classifier(session: object, x: Tensor, output_names: Sequence[str], layers: Sequence[str]) -> ClassifierRun:
    """Run an ONNX Runtime session with outputs ``logits``, ``attention/<layer>`` per layer and ``embedding``."""
    outputs = dict(zip(output_names, session.run(list(output_names), {session.get_inputs()[0].name: x.numpy()})))
    return (outputs["logits"], {layer: outputs[attention_output(layer)] for layer in layers},
            outputs.get(EMBEDDING_OUTPUT))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def match_detections(ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by label and IoU (highest reference score first), not by index."""
    if len(ref["boxes"]) == 0 or len(cand["boxes"]) == 0:
        return []
    iou = box_iou(ref["boxes"], cand["boxes"])
    iou[ref["labels"][:, None] != cand["labels"][None, :]] = -1
    pairs, used = [], set()
    for i in np.argsort(-ref["scores"], kind="stable"):
        order = [j for j in np.argsort(-iou[i]) if j not in used and iou[i, j] >= min_iou]
        if order:
            used.add(order[0])
            pairs.append((int(i), int(order[0])))
    return pairs


def compare_detector(backend: str, shape: list[int], reference: tuple, candidate: tuple, tol: Tolerance) -> ParityRow:
    """Detections matched by label and IoU, with box/score/mask differences, plus attention differences.

    A reference detection may stay unmatched only if its score is within ``tol.score`` of the lowest
    kept score (ties at the ``detections_per_img`` cut-off can legitimately swap).
    """
    (ref, ref_attn), (cand, cand_attn) = reference, candidate
    pairs = match_detections(ref, cand)
    ri = np.array([p[0] for p in pairs], dtype=int)
    ci = np.array([p[1] for p in pairs], dtype=int)
    stats: dict[str, float | int] = {"reference": len(ref["boxes"]), "candidate": len(cand["boxes"]), "matched": len(pairs)}
    stats["max_box_px"] = float(np.abs(ref["boxes"][ri] - cand["boxes"][ci]).max()) if len(pairs) else 0.0
    stats["max_score"] = float(np.abs(ref["scores"][ri] - cand["scores"][ci]).max()) if len(pairs) else 0.0
    if "masks" in ref and len(pairs):
        stats["max_mask"] = float(np.abs(ref["masks"][ri] - cand["masks"][ci]).max())
    row = ParityRow(backend, shape, detections=stats)
    row.max_abs_attention = max((float(np.abs(ref_attn[k] - cand_attn[k]).max()) for k in ref_attn if k in cand_attn), default=0.0)
    _detector_problems(row, ref, set(ri.tolist()), stats, tol)
    row.passed = not row.problems
    return row


def _detector_problems(row: ParityRow, ref: dict, matched: set[int], stats: dict, tol: Tolerance) -> None:
    cutoff = float(ref["scores"].min()) if len(ref["scores"]) else 0.0
    lost = [i for i in range(len(ref["boxes"])) if i not in matched and ref["scores"][i] > cutoff + tol.score]
    if lost:
        row.problems.append(f"{len(lost)} reference detections have no match (label + IoU >= 0.5)")
    for key, limit in (("max_box_px", tol.box_pixels), ("max_score", tol.score), ("max_mask", tol.mask)):
        if stats.get(key, 0.0) > limit:
            row.problems.append(f"{key} {stats[key]:.2e} > {limit:.0e}")
    if row.max_abs_attention > tol.attention:
        row.problems.append(f"attention differs by {row.max_abs_attention:.2e} > {tol.attention:.0e}")
