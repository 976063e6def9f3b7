"""Detector export: TorchScript (scripted) and ONNX (legacy exporter, one image per call, dynamic H/W)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from eca_serve.export import formats, parity
from eca_serve.export.entry import ExportOptions, Progress, finish_entry, write_artifacts
from eca_serve.introspect import attention_layers
from eca_serve.repository import DetectionSpec, EntryConfig, InputSpec, OutputSpec, attention_output, model_input_size

DetectorRun = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (detections of one image, attention)


class DetectorOutputs(nn.Module):
    """One image [3, H, W] -> (boxes, labels, scores[, masks], attention_1, ..., attention_L) for ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.attention_layers)
        self.has_masks = model.config.task == "instance_segmentation"

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        detections, attention = self.model.forward_with_attention([image])
        det = detections[0]
        head = [det["boxes"], det["labels"], det["scores"]] + ([det["masks"]] if self.has_masks else [])
        return (*head, *[attention[n] for n in self.names])


def detection_output_names(model: nn.Module) -> list[str]:
    """Graph outputs: boxes, labels, scores, [masks], then ``attention/<layer>``."""
    head = ["boxes", "labels", "scores"] + (["masks"] if model.config.task == "instance_segmentation" else [])
    return head + [attention_output(n) for n in model.attention_layers]


def export_detector_onnx(model: nn.Module, path: Path, example: Tensor) -> list[str]:
    """ONNX graph of ``DetectorOutputs`` with dynamic image height/width and detection count.

    NOTE: torchvision's detectors export with the legacy (TorchScript-based) exporter only. The backbone's
    attention gates are rewritten as for classifiers (`eca_serve.export.gates`).
    """
    names = detection_output_names(model)
    axes: dict[str, dict[int, str]] = {formats.INPUT_NAME: {1: "height", 2: "width"}}
    axes.update({n: {0: "detections"} for n in names if not n.startswith("attention/")})
    if "masks" in names:
        axes["masks"] = {0: "detections", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(DetectorOutputs(model).eval(), (example,), str(path), dynamo=False,
                          opset_version=formats.ONNX_OPSET, input_names=[formats.INPUT_NAME], output_names=names,
                          dynamic_axes=axes)
    formats.rewrite_gates_file(path, [n for n in names if n.startswith("attention/")])
    return names


def export_detector(model: nn.Module, out_dir: Path, options: ExportOptions, progress: Progress) -> EntryConfig:
    """Export a detector; see `eca_serve.export.export_model`."""
    images = _check_images(model, options)
    artifacts, backends = write_artifacts(model, out_dir, options, progress, lambda path: _onnx_backend(model, path, images[0]),
                                          wrap=lambda method: lambda x: _run_torch(method, x))
    rows = []
    for x in images:
        reference = _run_torch(model.forward_with_attention, x)
        rows += [parity.compare_detector(name, list(x.shape), reference, run(x), options.tolerance) for name, run in backends.items()]
    report = parity.ParityReport(rows, options.tolerance)
    detection = DetectionSpec(**{k: model.config.extra[k] for k in ("min_size", "max_size", "score_thresh", "nms_thresh",
                                                                     "detections_per_img")},
                              warmup_size=model.config.preprocess.input_size)
    return finish_entry(model, out_dir, options, report, input_spec(model), output_specs(model), artifacts, detection)


def _check_images(model: nn.Module, options: ExportOptions) -> list[Tensor]:
    """Parity inputs at sizes the model's own transform leaves unchanged (the serving pipeline resizes
    to such sizes first).

    NOTE: at other sizes torchvision's transform rounds the resized size differently in eager and
    scripted mode, so eager and TorchScript legitimately differ there.
    """
    lo, hi = model.config.extra["min_size"], model.config.extra["max_size"]
    wide = model_input_size(round(lo * 1.37), lo, lo, hi)
    shapes = options.check_inputs or [(1, lo, lo), (1, wide[1], wide[0])]
    gen = torch.Generator().manual_seed(options.seed)
    return [_scene(h, w, gen) for _, h, w in shapes]


def _scene(h: int, w: int, gen: torch.Generator) -> Tensor:
    """A test image [3, H, W] in [0, 1]: smooth background plus a few solid rectangles (clear objects)."""
    image = torch.rand(3, 1, 1, generator=gen) * torch.linspace(0.3, 1.0, w).expand(3, h, w)
    for _ in range(4):
        y, x = (torch.rand(2, generator=gen) * torch.tensor([h * 0.7, w * 0.7])).int().tolist()
        image[:, y : y + h // 4, x : x + w // 4] = torch.rand(3, 1, 1, generator=gen)
    return image.clamp(0, 1)


def _run_torch(fn: Callable, x: Tensor) -> DetectorRun:
    with torch.inference_mode():
        detections, attention = fn([x])
    det = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in detections[0].items()}
    return det, {k: v.float().numpy() for k, v in attention.items()}


def _onnx_backend(model: nn.Module, path: Path, example: Tensor) -> Callable[[Tensor], DetectorRun]:
    import onnxruntime as ort

    names = export_detector_onnx(model, path, example)
    formats.check_onnx(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # torchvision's mask-paste loop warns about shapes once per detection
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> DetectorRun:
        values = dict(zip(names, session.run(names, {formats.INPUT_NAME: x.numpy()})))
        attention = {n[len("attention/"):]: v for n, v in values.items() if n.startswith("attention/")}
        return {k: v for k, v in values.items() if not k.startswith("attention/")}, attention

    return run


def input_spec(model: nn.Module) -> InputSpec:
    """One RGB image in [0, 1] of any size, normalised inside the model.

    The server resizes images with Pillow to the working size (`model_input_size`) first, where the
    model's own resize is the identity; other callers of the graph get its internal resize.
    """
    transform = model.transform
    return InputSpec(layout="CHW", size=None, resize=None, crop=False, mean=tuple(transform.image_mean),
                     std=tuple(transform.image_std), normalized_in_model=True)


def output_specs(model: nn.Module) -> list[OutputSpec]:
    """Per-image outputs of the graph; -1 marks the detection count and the image size."""
    specs = [OutputSpec(name="boxes", shape=[-1, 4], dtype="float32"), OutputSpec(name="labels", shape=[-1], dtype="int64"),
             OutputSpec(name="scores", shape=[-1], dtype="float32")]
    if model.config.task == "instance_segmentation":
        specs.append(OutputSpec(name="masks", shape=[-1, 1, -1, -1], dtype="float32"))
    return specs + [OutputSpec(name=attention_output(a.name), shape=[1, a.channels], dtype="float32")
                    for a in attention_layers(model)]
