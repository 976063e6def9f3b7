"""A repository entry from an exported model: options, weights, parity report and (last) ``config.json``.

Shared by the classifier and detector exports; `eca_serve.export.exporter` picks one of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

import eca_serve
from eca_serve.errors import EcaServeError
from eca_serve.export import formats, parity
from eca_serve.repository import (
    ArtifactSpec, AttentionSpec, DetectionSpec, EmbeddingSpec, EntryConfig, InputSpec, OutputSpec, artifact_spec,
    attention_output, write_config,
)
from eca_serve.introspect import attention_layers

FORMATS = ("torchscript", "onnx")
WEIGHTS_FILE = "weights.safetensors"
PARITY_FILE = "parity.json"


class ExportParityError(EcaServeError):
    """An exported artifact disagrees with the eager model beyond tolerance."""


@dataclass
class ExportOptions:
    """What to export and how to check it.

    Attributes:
        name: Model name in the repository (folder name).
        version: Version folder (integer >= 1).
        formats: Subset of ``FORMATS``.
        check_inputs: (batch, H, W) inputs for the parity check; the first is also the export input.
            Default: batch 1 at the model's input size, then batch 3 at a larger size.
        tolerance: Accepted differences.
        metrics: Evaluation numbers recorded in the config (e.g. top-1 on a held-out set).
        provenance: How the weights were made (command, seed, training time).
        seed: Seed of the random parity inputs.
    """

    name: str
    version: int = 1
    formats: tuple[str, ...] = FORMATS
    check_inputs: list[tuple[int, int, int]] | None = None
    tolerance: parity.Tolerance = field(default_factory=parity.Tolerance)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


Progress = Callable[[str], None]


def save_weights(model: nn.Module, out_dir: Path) -> ArtifactSpec:
    """``weights.safetensors`` with the model config as metadata (categories survive a reload)."""
    path = out_dir / WEIGHTS_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(model.config.to_dict(), default=list)})
    path.chmod(0o644)  # safetensors writes through a private temporary file (0600); the other artifacts are 0644
    return artifact_spec(path, "safetensors")


def write_artifacts(model: nn.Module, out_dir: Path, options: ExportOptions, progress: Progress,
                    onnx: Callable[[Path], Callable[..., Any]],
                    wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda method: method,
                    method: str = "forward_with_attention") -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
    """Weights, then TorchScript and ONNX as ``options.formats`` asks.

    Args:
        onnx: Writes the ONNX graph to the path it is given; returns a runner of the written graph.
        wrap: Turns a TorchScript method into a runner comparable with the ONNX one.
        method: The TorchScript method the parity check runs.

    Returns:
        The artifact specs by kind, and a runner per backend for the parity check.
    """
    progress("weights")
    artifacts: dict[str, Any] = {"weights": save_weights(model, out_dir)}
    backends: dict[str, Callable[..., Any]] = {}
    if "torchscript" in options.formats:
        progress("torchscript")
        variants = formats.torchscript_variants(model, out_dir / "model.pt", method)
        backends.update({name: wrap(run) for name, run in variants.items()})
        artifacts["torchscript"] = artifact_spec(out_dir / "model.pt", "torchscript")
    if "onnx" in options.formats:
        progress("onnx")
        backends["onnxruntime"] = onnx(out_dir / "model.onnx")
        artifacts["onnx"] = artifact_spec(out_dir / "model.onnx", "onnx")
    progress("parity")
    return artifacts, backends


def attention_specs(model: nn.Module) -> list[AttentionSpec]:
    """Attention layers with the graph output that carries each one's weights."""
    return [
        AttentionSpec(name=a.name, kind=a.kind, channels=a.channels, k_size=a.k_size,
                      output=attention_output(a.name), shape=list(a.shape) if a.shape else None)
        for a in attention_layers(model)
    ]


def build_kwargs(model: nn.Module) -> dict[str, Any]:
    """Arguments that rebuild the architecture with `create_model` (JSON-friendly)."""
    extra = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.extra.items()}
    return {**extra, "num_classes": model.config.num_classes}


def write_parity(out_dir: Path, report: parity.ParityReport) -> None:
    """``parity.json`` beside the artifacts."""
    (out_dir / PARITY_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def finish_entry(
    model: nn.Module, out_dir: Path, options: ExportOptions, report: parity.ParityReport,
    input_spec: InputSpec, outputs: list[OutputSpec], artifacts: dict[str, Any], detection: DetectionSpec | None = None,
    embedding: EmbeddingSpec | None = None,
) -> EntryConfig:
    """Write the parity report, then (only if it passed) ``config.json``."""
    write_parity(out_dir, report)
    if not report.passed:
        problems = [f"{r.backend} {r.input_shape}: {'; '.join(r.problems)}" for r in report.rows if not r.passed]
        raise ExportParityError("export parity failed: " + " | ".join(problems) + f" (report: {out_dir / PARITY_FILE})")
    cfg = model.config
    config = EntryConfig(
        name=options.name, version=options.version, task=cfg.task, architecture=cfg.name,
        build_kwargs=build_kwargs(model), num_classes=cfg.num_classes, categories=list(cfg.categories),
        input=input_spec, outputs=outputs, attention=attention_specs(model), embedding=embedding, artifacts=artifacts,
        detection=detection, parity=report.to_dict(), metrics=options.metrics,
        provenance={**options.provenance, "eca_serve": eca_serve.__version__, "torch": torch.__version__},
    )
    write_config(out_dir, config)
    return config
