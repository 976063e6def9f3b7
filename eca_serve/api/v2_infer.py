"""A parsed v2 infer request on a pipeline: input checks, the model's batcher, output tensors.

The tensors each task takes and returns are described in `eca_serve.api.v2_models`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from eca_serve.errors import TooManyImagesError
from eca_serve.api.v2_codec import InferRequest, OutputRequest, ShapeCheck, Tensor, request_priority, request_timeout_s
from eca_serve.api.v2_models import IMAGE, INPUT, LOGITS, MASKS, PROBABILITIES, TensorSpec, input_specs, is_classifier, output_specs
from eca_serve.errors import ImageTooLargeError, InferenceRequestError
from eca_serve.repository import EntryConfig
from eca_serve.pipelines.base import ImageInput, ModelPipeline
from eca_serve.pipelines.classification import softmax
from eca_serve.pipelines.detection import to_original_pixels
from eca_serve.pipelines.masks import encode_mask
from eca_serve.runtime import attention_key

Raw = dict[str, np.ndarray]


@dataclass(frozen=True)
class InferLimits:
    """Per-request bounds, checked on declared shapes before any tensor data is read."""

    max_images: int
    max_tensor_rows: int
    max_pixels: int


@dataclass(frozen=True)
class Selected:
    """An output to return: its spec, whether it goes binary, and the classification count (0 = raw)."""

    spec: TensorSpec
    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class _Ran:
    """One image's raw outputs, its model input shape [3, h, w] and the (width, height) boxes map to."""

    raw: Raw
    input_shape: tuple[int, ...]
    size: tuple[int, int]


def shape_checker(config: EntryConfig, limits: InferLimits) -> ShapeCheck:
    """Checks an input's name, datatype and declared shape against the model and ``limits``."""
    specs = {s.name: s for s in input_specs(config)}

    def check(name: str, datatype: str, shape: tuple[int, ...]) -> None:
        spec = specs.get(name)
        if spec is None:
            raise InferenceRequestError(f"model {config.name!r} has no input {name!r}; its inputs are {list(specs)}")
        if datatype != spec.datatype:
            raise InferenceRequestError(f"input {name!r} of model {config.name!r} is {spec.datatype}, got {datatype}")
        if name == IMAGE:
            _check_image_shape(shape, limits)
        else:
            _check_tensor_shape(shape, spec.shape, limits)
    return check


def _check_image_shape(shape: tuple[int, ...], limits: InferLimits) -> None:
    if len(shape) not in (1, 2) or shape[0] < 1 or shape[1:] not in ((), (1,)):
        raise InferenceRequestError(f"input 'image' must be BYTES [N] (or [N, 1]) with N >= 1, got {list(shape)}")
    if shape[0] > limits.max_images:
        raise TooManyImagesError(f"at most {limits.max_images} images per request, got {shape[0]}")


def _check_tensor_shape(shape: tuple[int, ...], declared: tuple[int, ...], limits: InferLimits) -> None:
    if len(shape) != 4 or shape[0] < 1 or shape[1] != 3 or min(shape[2:]) < 1:
        raise InferenceRequestError(f"input 'input' must be FP32 {_dims(declared)} with N, H, W >= 1, got {list(shape)}")
    if declared[2] != -1 and shape[2:] != declared[2:]:
        raise InferenceRequestError(f"input 'input' must be FP32 {_dims(declared)}, got {list(shape)}")
    if shape[0] > limits.max_tensor_rows:
        raise TooManyImagesError(f"at most {limits.max_tensor_rows} rows of 'input' per request, got {shape[0]}")
    if shape[2] * shape[3] > limits.max_pixels:
        raise ImageTooLargeError(f"input 'input' of {shape[2]}x{shape[3]} is over the limit of {limits.max_pixels} pixels")


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if i == 0 else "H" if d == -1 and i == 2 else "W" if d == -1 else str(d)
                           for i, d in enumerate(shape)) + "]"


def select_outputs(config: EntryConfig, request: InferRequest) -> list[Selected]:
    """The requested outputs (all when none are named), each with its binary flag."""
    specs = {s.name: s for s in output_specs(config)}
    wanted = request.outputs if request.outputs is not None else [OutputRequest(name) for name in specs]
    selected = []
    for output in wanted:
        if output.name not in specs:
            raise InferenceRequestError(f"model {config.name!r} has no output {output.name!r}; its outputs are {list(specs)}")
        _check_classification(config, output)
        binary = request.binary_output if output.binary is None else output.binary
        selected.append(Selected(specs[output.name], binary, output.classification))
    return selected


def _check_classification(config: EntryConfig, output: OutputRequest) -> None:
    if not output.classification:
        return
    if output.name not in (LOGITS, PROBABILITIES) or not is_classifier(config):
        raise InferenceRequestError(f"classification applies to a classifier's {LOGITS!r} or {PROBABILITIES!r}, not {output.name!r}")
    if output.classification > config.num_classes:
        raise InferenceRequestError(f"classification must be between 1 and {config.num_classes}, got {output.classification}")


async def run_inference(pipeline: ModelPipeline, request: InferRequest) -> list[tuple[Tensor, bool]]:
    """Run ``request`` through the pipeline's batcher; (output tensor, send as binary) in response order."""
    selected = select_outputs(pipeline.config, request)
    if len(request.inputs) != 1:
        raise InferenceRequestError(f"send exactly one input, {INPUT!r} or {IMAGE!r}; got {[t.name for t in request.inputs]}")
    source = request.inputs[0]
    submit = {"priority": request_priority(request.parameters), "timeout_s": request_timeout_s(request.parameters)}
    if is_classifier(pipeline.config):
        ran = await _run(pipeline, source, submit)
        return classifier_outputs(pipeline.config, [r.raw for r in ran], selected)
    options = detect_parameters(request.parameters)
    ran = await _run(pipeline, source, submit)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pipeline.decode_executor, detector_outputs, pipeline.config, ran, selected, options)


async def _run(pipeline: ModelPipeline, source: Tensor, submit: dict[str, Any]) -> list[_Ran]:
    if source.name == INPUT:
        rows = _rows(source)
        raws = await pipeline.infer_tensors(rows, **submit)
        return [_Ran(raw, row.shape, (row.shape[2], row.shape[1])) for raw, row in zip(raws, rows)]
    ran = await pipeline.infer_images([ImageInput(item) for item in source.data], **submit)
    return [_Ran(raw, p.tensor.shape, p.decoded.original_size) for p, raw in ran]


def _rows(source: Tensor) -> list[np.ndarray]:
    """Writable float32 copies of the rows [3, H, W] of an FP32 [N, 3, H, W] input."""
    data = np.asarray(source.data)
    if not np.isfinite(data).all():
        raise InferenceRequestError("input 'input' holds NaN or infinite values")
    return [np.array(row, dtype=np.float32) for row in data]


def classifier_outputs(config: EntryConfig, raws: list[Raw], selected: list[Selected]) -> list[tuple[Tensor, bool]]:
    """Output tensors of N images from their raw outputs (logits [K], attention [C] each)."""
    logits = np.stack([np.asarray(r[LOGITS], np.float32).reshape(-1) for r in raws])
    probabilities = softmax(logits)
    keys = {a.output: attention_key(a.name) for a in config.attention}
    out = []
    for sel in selected:
        name = sel.spec.name
        if sel.classification:
            out.append((classification_tensor(name, probabilities, sel.classification, config.categories), sel.binary))
            continue
        value = logits if name == LOGITS else probabilities.astype(np.float32) if name == PROBABILITIES else _stack(raws, keys[name])
        out.append((Tensor(name, "FP32", value.shape, value), sel.binary))
    return out


def classification_tensor(name: str, probabilities: np.ndarray, k: int, categories: list[str]) -> Tensor:
    """BYTES [N, k] of ``"<probability>:<index>:<label>"``, most probable first (classification extension)."""
    items = []
    for row in probabilities:
        for index in np.argsort(-row, kind="stable")[:k]:
            items.append(f"{row[index]:f}:{index}:{categories[index]}".encode())
    return Tensor(name, "BYTES", (len(probabilities), k), items)


def _stack(raws: list[Raw], key: str) -> np.ndarray:
    """One attention layer of N images: [N, C]."""
    return np.stack([np.asarray(r[key], np.float32).reshape(-1) for r in raws])


@dataclass(frozen=True)
class DetectParameters:
    """Request parameters ``score_threshold`` (default 0: everything the model returns) and ``max_detections``."""

    score_threshold: float = 0.0
    max_detections: int | None = None


def detect_parameters(parameters: dict[str, Any]) -> DetectParameters:
    threshold = parameters.get("score_threshold", 0.0)
    limit = parameters.get("max_detections")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InferenceRequestError(f"parameters.score_threshold must be a number in [0, 1], got {threshold!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InferenceRequestError(f"parameters.max_detections must be an integer >= 1, got {limit!r}")
    return DetectParameters(float(threshold), limit)


def detector_outputs(config: EntryConfig, ran: list[_Ran], selected: list[Selected],
                     options: DetectParameters) -> list[tuple[Tensor, bool]]:
    """Detections of N images concatenated ([D, ...] with ``batch_index``), attention [N, C]."""
    want_masks = any(s.spec.name == MASKS for s in selected)
    per_image = [_detections(r, options, want_masks) for r in ran]
    columns: dict[str, np.ndarray | list[bytes]] = {
        "boxes": np.concatenate([d["boxes"] for d in per_image]).reshape(-1, 4),
        "scores": np.concatenate([d["scores"] for d in per_image]),
        "labels": np.concatenate([d["labels"] for d in per_image]),
        "batch_index": np.concatenate([np.full(len(d["scores"]), i, np.int64) for i, d in enumerate(per_image)]),
        MASKS: [m for d in per_image for m in d.get(MASKS, [])],
    }
    keys = {a.output: attention_key(a.name) for a in config.attention}
    out = []
    for sel in selected:
        name = sel.spec.name
        value = _stack([r.raw for r in ran], keys[name]) if name in keys else columns[name]
        shape = value.shape if isinstance(value, np.ndarray) else (len(value),)
        out.append((Tensor(name, sel.spec.datatype, shape, value), sel.binary))
    return out


def _detections(ran: _Ran, options: DetectParameters, want_masks: bool) -> dict[str, Any]:
    """One image's kept detections: boxes [d, 4] mapped to ``ran.size``, scores, labels and RLE masks."""
    raw = ran.raw
    keep = np.flatnonzero(np.asarray(raw["scores"]) >= options.score_threshold)[: options.max_detections]
    found = {"boxes": to_original_pixels(np.asarray(raw["boxes"])[keep], ran.input_shape, ran.size),
             "scores": np.asarray(raw["scores"], np.float32)[keep], "labels": np.asarray(raw["labels"], np.int64)[keep]}
    if want_masks and raw.get(MASKS) is not None:
        found[MASKS] = [json.dumps(encode_mask(raw[MASKS][i, 0], ran.size, "rle"), separators=(",", ":")).encode() for i in keep]
    return found
