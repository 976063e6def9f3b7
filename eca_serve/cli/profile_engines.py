"""Engines and precisions that ``profile --recommend`` measures, and the report a BF16 choice carries.

A BF16 choice writes ``precision_bf16.json`` next to the entry, like the INT8 report of ``eca-serve
quantize``: top-1 of FP32 and BF16 (both on OpenVINO) on seeded held-out Shapes images, their
agreement, and the largest probability and attention differences.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from eca_serve.errors import ConfigError

log = logging.getLogger(__name__)
BF16_REPORT = "precision_bf16.json"
HELD_OUT_SEED, HELD_OUT_IMAGES = 4242, 400  # a seed the shipped models never trained on


def engine_variants(config: Any, device: str, engines: str = "auto") -> list[tuple[str, str]]:
    """(engine, precision) pairs to measure, ONNX Runtime at the entry's own precision first (the baseline).

    ``engines``: ``auto`` (every engine installed here; BF16 only where the CPU computes it) or a
    comma-separated list of ``onnxruntime``/``openvino``.
    """
    from eca_serve.kinds import ENGINES, Device
    from eca_serve.runtime.engines import cpu_flags, has_bf16, openvino_installed

    if Device(device).is_cuda:
        return [("onnxruntime", config.precision)]
    names = [n.strip() for n in engines.split(",")] if engines != "auto" else list(ENGINES)
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ConfigError(f"unknown engine(s) {unknown}; choose from {list(ENGINES)}")
    if engines == "auto" and not openvino_installed():
        names = ["onnxruntime"]
    variants = [(n, config.precision) for n in ["onnxruntime", *[n for n in names if n != "onnxruntime"]]]
    if "openvino" in names and config.precision == "fp32" and has_bf16(cpu_flags()):
        variants.append(("openvino", "bf16"))
    return variants


def write_reports(folder: Path, config: Any, block: Any) -> Path | None:
    """With a BF16 ``block`` (a `ServingSpec`), measure its accuracy and write ``precision_bf16.json``."""
    if block.precision != "bf16":
        return None
    report = bf16_report(folder, config)
    path = folder / BF16_REPORT
    path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("bf16 accuracy report: %s", path)
    return path


def bf16_report(folder: Path, config: Any, images: int = HELD_OUT_IMAGES) -> dict[str, Any]:
    """FP32 against BF16 (OpenVINO) on ``images`` held-out Shapes images of a classifier.

    Returns:
        top1_fp32 / top1_bf16 (percent), agreement (percent of same top-1), max_abs_prob_diff,
        max_abs_attention_diff, what was compared and on which CPU (``cpu_has_bf16``).
    """
    from eca_serve.runtime import BackendOptions, create_backend
    from eca_serve.runtime.engines import cpu_flags, cpu_model, has_bf16

    if config.task != "classification":
        raise ConfigError(f"{config.name}: the bf16 accuracy report covers classifiers (detectors: compare AP by hand)")
    inputs, labels = held_out_inputs(config, images)
    runs = {p: _infer_all(create_backend(folder, config, BackendOptions("openvino", "cpu", precision=p)), inputs)
            for p in ("fp32", "bf16")}
    probs = {p: _softmax(out["logits"]) for p, out in runs.items()}
    top1 = {p: v.argmax(1) for p, v in probs.items()}
    attention = [k for k in runs["fp32"] if k.startswith("attention/")]
    return {
        "precision": "bf16", "engine": "openvino", "images": len(labels), "cpu": cpu_model(),
        "cpu_has_bf16": has_bf16(cpu_flags()),  # False: OpenVINO ran FP32 for both, the numbers say nothing of BF16
        "source": f"eca_serve.data classification_item(seed={HELD_OUT_SEED}, index 0..{len(labels) - 1})",
        "top1_fp32": round(100 * float((top1["fp32"] == labels).mean()), 2),
        "top1_bf16": round(100 * float((top1["bf16"] == labels).mean()), 2),
        "agreement": round(100 * float((top1["fp32"] == top1["bf16"]).mean()), 2),
        "max_abs_prob_diff": float(np.abs(probs["fp32"] - probs["bf16"]).max()),
        "max_abs_attention_diff": max((float(np.abs(runs["fp32"][k] - runs["bf16"][k]).max()) for k in attention), default=None),
    }


def held_out_inputs(config: Any, images: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, 3, H, W] preprocessed as served, and labels [N], of seeded Shapes images."""
    from eca_serve.data._samples import classification_item
    from eca_serve.pipelines.preprocess import preprocess_classification

    size = max(config.input.size or (64, 64))
    items = [classification_item(HELD_OUT_SEED, i, size) for i in range(images)]
    inputs = np.stack([preprocess_classification(image.convert("RGB"), config.input) for image, _ in items])
    labels = np.asarray([config.categories.index(_shape_name(label)) for _, label in items])
    return inputs, labels


def _shape_name(label: int) -> str:
    from eca_serve.data._draw import SHAPE_CLASSES

    return SHAPE_CLASSES[label]


def _infer_all(backend: Any, inputs: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    parts = [backend.infer(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
