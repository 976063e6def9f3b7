"""Classifier export: TorchScript (forward, forward_with_attention, forward_with_embedding) and ONNX with
attention and embedding outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eca_serve.export import formats, parity
from eca_serve.export.entry import ExportOptions, Progress, finish_entry, write_artifacts
from eca_serve.introspect import attention_layers
from eca_serve.repository import EmbeddingSpec, EntryConfig, InputSpec, OutputSpec, attention_output


def export_classifier(model: nn.Module, out_dir: Path, options: ExportOptions, progress: Progress) -> EntryConfig:
    """Export a classifier; see `eca_serve.export.export_model`."""
    inputs = _check_inputs(model, options)
    artifacts, backends = write_artifacts(model, out_dir, options, progress, lambda path: _onnx_backend(model, path, inputs[0]),
                                          method="forward_with_embedding")
    report = _parity(model, backends, inputs, options.tolerance)
    embedding = embedding_spec(model, inputs[0])
    return finish_entry(model, out_dir, options, report, input_spec(model), output_specs(model, embedding), artifacts,
                        embedding=embedding)


def _check_inputs(model: nn.Module, options: ExportOptions) -> list[Tensor]:
    h, w = model.config.preprocess.input_size
    shapes = options.check_inputs or [(1, h, w), (3, h + 32, w + 32)]
    gen = torch.Generator().manual_seed(options.seed)
    return [torch.randn(b, 3, hh, ww, generator=gen) for b, hh, ww in shapes]


def _onnx_backend(model: nn.Module, path: Path, example: Tensor) -> Any:
    import onnxruntime as ort

    names = formats.export_classifier_onnx(model, path, example)
    formats.check_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: parity.run_onnx_classifier(session, x, names, model.attention_layers)


def _parity(model: nn.Module, backends: dict[str, Any], inputs: list[Tensor], tol: parity.Tolerance) -> parity.ParityReport:
    rows = []
    for x in inputs:
        reference = parity.run_torch_classifier(model.forward_with_embedding, x)
        for name, backend in backends.items():
            run = backend(x) if name == "onnxruntime" else parity.run_torch_classifier(backend, x)
            rows.append(parity.compare_classifier(name, x, reference, run, tol))
    return parity.ParityReport(rows, tol)


def input_spec(model: nn.Module) -> InputSpec:
    """Input description of a classifier: its preprocessing record as it is, as a [N, 3, H, W] tensor."""
    return InputSpec(layout="NCHW", **model.config.preprocess.record())


def embedding_spec(model: nn.Module, example: Tensor) -> EmbeddingSpec:
    """The embedding output and its dimension D, read from one forward pass of ``example`` [B, 3, H, W]."""
    with torch.inference_mode():
        _, embedding, _ = model.forward_with_embedding(example)
    return EmbeddingSpec(dim=embedding.shape[1])


def output_specs(model: nn.Module, embedding: EmbeddingSpec) -> list[OutputSpec]:
    """``logits`` [-1, K], ``attention/<layer>`` [-1, C] per layer, then ``embedding`` [-1, D]."""
    specs = [OutputSpec(name="logits", shape=[-1, model.config.num_classes], dtype="float32")]
    specs += [OutputSpec(name=attention_output(a.name), shape=[-1, *(a.shape or (a.channels,))], dtype="float32")
              for a in attention_layers(model)]
    return specs + [OutputSpec(name=embedding.output, shape=[-1, embedding.dim], dtype="float32")]
