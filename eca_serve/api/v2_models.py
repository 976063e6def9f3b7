"""What the Open Inference Protocol says about a model: tensors, metadata, Triton-shaped config and statistics.

Inputs of every model (N images per request, batch dimension first): ``input`` FP32 [N, 3, H, W]
(preprocessed: H and W from the config when it fixes them) or ``image`` BYTES [N] (encoded files).
Outputs: those of each task the entry serves (`eca_serve.pipelines.task.Task.output_specs`; e.g.
classification ``logits``/``probabilities`` [N, K], detection ``boxes`` [D, 4] ... with ``batch_index``,
embedding ``embedding`` [N, D]), then per attention layer ``attention/<layer>`` FP32 [N, C].
"""

from __future__ import annotations

from typing import Any

from eca_serve.repository import EntryConfig
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.manager import ModelManager
from eca_serve.pipelines.task import Task, TensorSpec

INPUT, IMAGE = "input", "image"
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "onnxruntime"), "torchscript": ("pytorch_libtorch", "pytorch"),
             "eager": ("pytorch_libtorch", "pytorch"), "openvino": ("openvino_onnx", "openvino")}
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}

__all__ = ["IMAGE", "INPUT", "TensorSpec", "input_specs", "output_owners", "output_specs"]


def input_specs(config: EntryConfig) -> list[TensorSpec]:
    """The two alternative inputs: preprocessed tensors or encoded images."""
    height, width = config.input.size if config.input.size else (-1, -1)
    return [TensorSpec(INPUT, "FP32", (-1, 3, height, width)), TensorSpec(IMAGE, "BYTES", (-1,))]


def output_owners(config: EntryConfig, tasks: list[Task]) -> dict[str, tuple[TensorSpec, Task | None]]:
    """Every output the model can return, in response order, with the task that makes it (None: attention)."""
    owned: dict[str, tuple[TensorSpec, Task | None]] = {}
    for task in tasks:
        for spec in task.output_specs(config):
            owned.setdefault(spec.name, (spec, task))
    for a in config.attention:
        owned[a.output] = (TensorSpec(a.output, "FP32", (-1, *a.item_shape())), None)
    return owned


def output_specs(pipeline: ModelPipeline) -> list[TensorSpec]:
    """Every output ``pipeline`` can return, in response order."""
    return [spec for spec, _ in output_owners(pipeline.config, pipeline.tasks).values()]


def engine_of(pipeline: ModelPipeline, setting: str) -> str:
    """The engine that runs ``pipeline`` (the server's ``backend`` setting may be ``auto``)."""
    return getattr(pipeline.backend, "kind", setting)


def model_metadata(pipeline: ModelPipeline, versions: list[int], backend: str) -> dict[str, Any]:
    """``GET /v2/models/{m}``: name, versions (strings), platform, inputs and outputs."""
    config = pipeline.config
    return {"name": config.name, "versions": [str(v) for v in versions], "platform": PLATFORMS[engine_of(pipeline, backend)][0],
            "inputs": [s.metadata() for s in input_specs(config)],
            "outputs": [s.metadata() for s in output_specs(pipeline)]}


def model_config(pipeline: ModelPipeline, backend: str) -> dict[str, Any]:
    """``GET /v2/models/{m}/config`` in Triton's shape.

    Tasks whose outputs have one row per input (classification, embedding) batch along the first
    dimension, so their dims leave it out (``max_batch_size`` > 0). Detector outputs have one row per
    detection, not per image: Triton would call that a model without batching (``max_batch_size`` 0,
    full shapes), even though eca-serve still batches same-size images behind the scenes.
    """
    config, policy = pipeline.config, pipeline.batcher.policy
    batched = all(task.batched for task in pipeline.tasks)
    platform, backend_name = PLATFORMS[engine_of(pipeline, backend)]
    return {
        "name": config.name, "platform": platform, "backend": backend_name,
        "max_batch_size": policy.max_batch_size if batched else 0,
        "input": [_triton_tensor(s, batched) for s in input_specs(config)],
        "output": [_triton_tensor(s, batched) for s in output_specs(pipeline)],
        "dynamic_batching": {
            "preferred_batch_size": [policy.max_batch_size],
            "max_queue_delay_microseconds": round(policy.max_queue_delay_ms * 1000),
            "default_queue_policy": {"timeout_action": "REJECT", "allow_timeout_override": True,
                                     "default_timeout_microseconds": round((policy.timeout_s or 0) * 1e6),
                                     "max_queue_size": policy.max_queue_size},
        },
    }


def _triton_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(spec.shape[1:] if batched else spec.shape)
    tensor: dict[str, Any] = {"name": spec.name, "data_type": _TRITON_TYPES[spec.datatype], "dims": dims or [1]}
    if not dims:  # Triton spells a per-item scalar as dims [1] reshaped to []
        tensor["reshape"] = {"shape": []}
    return tensor


def model_stats(pipeline: ModelPipeline) -> dict[str, Any]:
    """One ``model_stats`` entry (Triton's statistics extension) from the model's batcher counters.

    The batcher counts items and batches, not requests, so: ``success`` counts executed items
    (items of failed batches included), ``fail`` counts rejected and timed-out requests and failed
    batches, and ``compute_infer`` charges each item its batch's average compute time. Neither the
    time of the last inference nor compute times per batch size are recorded (reported as 0).
    """
    stats = pipeline.batcher.stats()
    queue_ns = round(stats.queue_time_s * 1e9)
    per_batch_ns = stats.compute_time_s * 1e9 / stats.execution_count if stats.execution_count else 0.0
    compute_ns = round(per_batch_ns * stats.inference_count)
    fails = stats.rejected_count + stats.timeout_count + stats.failed_execution_count
    return {
        "name": pipeline.config.name, "version": str(pipeline.config.version), "last_inference": 0,
        "inference_count": stats.inference_count, "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _count(stats.inference_count, queue_ns + compute_ns), "fail": _count(fails, 0),
            "queue": _count(stats.inference_count, queue_ns), "compute_input": _count(0, 0),
            "compute_infer": _count(stats.inference_count, compute_ns), "compute_output": _count(0, 0),
            "cache_hit": _count(0, 0), "cache_miss": _count(0, 0),
        },
        "batch_stats": [{"batch_size": size, "compute_input": _count(0, 0), "compute_infer": _count(count, 0),
                         "compute_output": _count(0, 0)} for size, count in stats.batch_size_histogram.items()],
    }


def _count(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def repository_index(manager: ModelManager) -> list[dict[str, str]]:
    """``POST /v2/repository/index``: every version in the repository, its state and why it is not READY."""
    return manager.control.index()
