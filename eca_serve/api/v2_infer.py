"""A parsed v2 infer request on the task contract: input checks, parameters, `Result`s -> output tensors.

The tensors each task takes and returns are its own (`eca_serve.pipelines.task.Task`); this module
only routes the requested outputs to the tasks that make them, runs them in one forward pass and
lays their columns out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eca_serve.api.v2_codec import InferRequest, OutputRequest, ShapeCheck, Tensor, request_priority, request_timeout_s
from eca_serve.api.v2_models import IMAGE, INPUT, input_specs, output_owners
from eca_serve.errors import ImageTooLargeError, InferenceRequestError, TooManyImagesError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import ImageInput, Result, RunParams
from eca_serve.pipelines.task import Column, OutputAsk, Task, TensorSpec
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
    """An output to return: its spec, the task that makes it (None: attention), whether it goes binary, and
    the classification count (0 = raw)."""

    spec: TensorSpec
    task: Task | None
    binary: bool
    classification: int = 0

    @property
    def ask(self) -> OutputAsk:
        return OutputAsk(self.spec.name, self.classification)


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


def select_outputs(config: EntryConfig, tasks: list[Task], request: InferRequest) -> list[Selected]:
    """The requested outputs of an entry serving ``tasks``, each with its task and binary flag.

    None named: every output of the entry's own task and the attention outputs (an extra task's outputs,
    such as a classifier's ``embedding``, are returned when named: a default answer stays what it was).
    """
    owners = output_owners(config, tasks)
    wanted = request.outputs if request.outputs is not None else [
        OutputRequest(name) for name, (_, task) in owners.items() if task is None or task is tasks[0]]
    selected = []
    for output in wanted:
        if output.name not in owners:
            raise InferenceRequestError(f"model {config.name!r} has no output {output.name!r}; its outputs are {list(owners)}")
        spec, task = owners[output.name]
        if output.classification and task is None:
            raise InferenceRequestError(f"classification does not apply to output {output.name!r}")
        binary = request.binary_output if output.binary is None else output.binary
        chosen = Selected(spec, task, binary, output.classification)
        if task is not None:
            task.check_output(chosen.ask, config)
        selected.append(chosen)
    return selected


async def run_inference(pipeline: ModelPipeline, request: InferRequest) -> list[tuple[Tensor, bool]]:
    """Run ``request`` through the task contract; (output tensor, send as binary) in response order.

    Every task with a requested output answers from the same forward pass (the entry's own task when
    only attention is asked for).
    """
    selected = select_outputs(pipeline.config, pipeline.tasks, request)
    if len(request.inputs) != 1:
        raise InferenceRequestError(f"send exactly one input, {INPUT!r} or {IMAGE!r}; got {[t.name for t in request.inputs]}")
    tasks = [t for t in pipeline.tasks if any(s.task is t for s in selected)] or [pipeline.task]
    attention = any(s.task is None for s in selected)
    params = [_task_parameters(task, request, selected, attention and i == 0) for i, task in enumerate(tasks)]
    answers = await pipeline.run_tasks(_inputs(request.inputs[0]), params)
    columns: dict[str, Column] = _attention_columns(pipeline.config, answers[0])
    for task, results in zip(tasks, answers):
        columns.update(task.columns(pipeline.config, results))
    count = len(answers[0])
    out = []
    for sel in selected:
        if sel.classification:
            assert sel.task is not None
            items = sel.task.classification_column(sel.spec.name, answers[tasks.index(sel.task)], sel.classification)
            out.append((Tensor(sel.spec.name, "BYTES", (count, sel.classification), items), sel.binary))
            continue
        value = columns[sel.spec.name]
        shape = value.shape if isinstance(value, np.ndarray) else (len(value),)
        out.append((Tensor(sel.spec.name, sel.spec.datatype, shape, value), sel.binary))
    return out


def _task_parameters(task: Task, request: InferRequest, selected: list[Selected], attention: bool) -> RunParams:
    """``task``'s parameters: the request's ``parameters`` plus what its outputs ask for (classification count, masks)."""
    values = {
        **request.parameters,
        "priority": request_priority(request.parameters),
        "timeout_s": request_timeout_s(request.parameters),
        **task.v2_parameters([s.ask for s in selected if s.task is task]),
        "attention": attention,
    }
    return task.params_type.parse(values)


def _inputs(source: Tensor) -> list[ImageInput] | list[np.ndarray]:
    """Encoded images, or writable float32 copies of the rows [3, H, W] of an FP32 [N, 3, H, W] input."""
    if source.name == INPUT:
        return [np.array(row, dtype=np.float32) for row in np.asarray(source.data)]
    return [ImageInput(item) for item in source.data]


def _attention_columns(config: EntryConfig, results: list[Result]) -> dict[str, Column]:
    """Each attention output of N images, [N, C], when the results carry attention."""
    if not results or results[0].attention is None:
        return {}
    return {spec.output: np.stack([r.attention[i].weights.astype(np.float32).reshape(spec.item_shape()) for r in results])
            for i, spec in enumerate(config.attention)}
