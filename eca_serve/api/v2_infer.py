"""A parsed v2 infer request on the task contract: input checks, parameters, `Result`s -> output tensors.

The tensors each task takes and returns are described in `eca_serve.api.v2_models`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from eca_serve.api.v2_codec import InferRequest, OutputRequest, ShapeCheck, Tensor, request_priority, request_timeout_s
from eca_serve.api.v2_models import IMAGE, INPUT, LOGITS, MASKS, PROBABILITIES, TensorSpec, input_specs, is_classifier, output_specs
from eca_serve.errors import ImageTooLargeError, InferenceRequestError, InvalidParameterError, TooManyImagesError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import Classification, DetectionResult, ImageInput, Result
from eca_serve.repository import EntryConfig
from eca_serve.settings import Settings


@dataclass(frozen=True)
class InferLimits:
    """Per-request bounds, checked on declared shapes before any tensor data is read."""

    max_images: int
    max_tensor_rows: int
    max_pixels: int

    @classmethod
    def of(cls, settings: Settings) -> InferLimits:
        """The server's limits; preprocessed rows are cheap next to decoding files, hence more of them per request."""
        return cls(max_images=settings.max_images_per_request, max_tensor_rows=settings.max_images_per_request * 4,
                   max_pixels=settings.max_image_pixels)


@dataclass(frozen=True)
class Selected:
    """An output to return: its spec, whether it goes binary, and the classification count (0 = raw)."""

    spec: TensorSpec
    binary: bool
    classification: int = 0


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
        raise InvalidParameterError(f"classification must be between 1 and {config.num_classes}, got {output.classification}")


async def run_inference(pipeline: ModelPipeline, request: InferRequest) -> list[tuple[Tensor, bool]]:
    """Run ``request`` through the task contract; (output tensor, send as binary) in response order."""
    selected = select_outputs(pipeline.config, request)
    if len(request.inputs) != 1:
        raise InferenceRequestError(f"send exactly one input, {INPUT!r} or {IMAGE!r}; got {[t.name for t in request.inputs]}")
    params = pipeline.params_type.parse(_task_parameters(pipeline.config, request, selected))
    results = await pipeline.run(_inputs(request.inputs[0]), params)
    if is_classifier(pipeline.config):
        return classifier_outputs(pipeline.config, results, selected)
    return detector_outputs(pipeline.config, results, selected)


def _task_parameters(config: EntryConfig, request: InferRequest, selected: list[Selected]) -> dict[str, Any]:
    """The request's ``parameters`` plus what its outputs ask for (classification count, attention, masks)."""
    names = {s.spec.name for s in selected}
    return {
        **request.parameters,
        "priority": request_priority(request.parameters),
        "timeout_s": request_timeout_s(request.parameters),
        "top_k": max([s.classification for s in selected] + [1]),
        "attention": any(a.output in names for a in config.attention),
        "masks": "rle" if MASKS in names else "none",
    }


def _inputs(source: Tensor) -> list[ImageInput] | list[np.ndarray]:
    """Encoded images, or writable float32 copies of the rows [3, H, W] of an FP32 [N, 3, H, W] input."""
    if source.name == INPUT:
        return [np.array(row, dtype=np.float32) for row in np.asarray(source.data)]
    return [ImageInput(item) for item in source.data]


def classifier_outputs(config: EntryConfig, results: list[Classification], selected: list[Selected]) -> list[tuple[Tensor, bool]]:
    """Output tensors of N images: logits and probabilities [N, K], attention [N, C], or top-k BYTES [N, k]."""
    columns = {LOGITS: np.stack([r.logits for r in results]).astype(np.float32),
               PROBABILITIES: np.stack([r.probabilities for r in results]).astype(np.float32),
               **_attention_columns(config, results)}
    out = []
    for sel in selected:
        name = sel.spec.name
        if sel.classification:
            out.append((classification_tensor(name, results, sel.classification), sel.binary))
        else:
            out.append((Tensor(name, "FP32", columns[name].shape, columns[name]), sel.binary))
    return out


def classification_tensor(name: str, results: list[Classification], k: int) -> Tensor:
    """BYTES [N, k] of ``"<probability>:<index>:<label>"``, most probable first (classification extension)."""
    items = [f"{p.score:f}:{p.index}:{p.label}".encode() for r in results for p in r.predictions[:k]]
    return Tensor(name, "BYTES", (len(results), k), items)


def _attention_columns(config: EntryConfig, results: list[Result]) -> dict[str, np.ndarray]:
    """Each attention output of N images, [N, C], when the results carry attention."""
    if not results or results[0].attention is None:
        return {}
    return {spec.output: np.stack([r.attention[i].weights.astype(np.float32).reshape(spec.item_shape()) for r in results])
            for i, spec in enumerate(config.attention)}


def detector_outputs(config: EntryConfig, results: list[DetectionResult], selected: list[Selected]) -> list[tuple[Tensor, bool]]:
    """Detections of N images concatenated ([D, ...] with ``batch_index``), attention [N, C]."""
    found = [(i, d) for i, r in enumerate(results) for d in r.detections]
    columns: dict[str, np.ndarray | list[bytes]] = {
        "boxes": np.array([d.box for _, d in found], np.float32).reshape(-1, 4),
        "scores": np.array([d.score for _, d in found], np.float32),
        "labels": np.array([d.label for _, d in found], np.int64),
        "batch_index": np.array([i for i, _ in found], np.int64),
        MASKS: [json.dumps(d.mask, separators=(",", ":")).encode() for _, d in found if d.mask is not None],
        **_attention_columns(config, results),
    }
    out = []
    for sel in selected:
        value = columns[sel.spec.name]
        shape = value.shape if isinstance(value, np.ndarray) else (len(value),)
        out.append((Tensor(sel.spec.name, sel.spec.datatype, shape, value), sel.binary))
    return out
