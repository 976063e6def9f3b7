"""What the Open Inference Protocol says about a model: tensors, metadata, Triton-shaped config and statistics.

Tensors of a classifier (N images per request, batch dimension first):

* inputs: ``input`` FP32 [N, 3, H, W] (preprocessed, H and W from the config) or ``image`` BYTES [N]
  (encoded files);
* outputs: ``logits`` and ``probabilities`` FP32 [N, K], and per attention layer ``attention/<layer>``
  FP32 [N, C].

Tensors of a detector (detections of all N images concatenated, ``batch_index`` says whose):

* inputs: ``input`` FP32 [N, 3, H, W] (RGB in [0, 1], any H and W) or ``image`` BYTES [N];
* outputs: ``boxes`` FP32 [D, 4] (x1, y1, x2, y2; original pixels for ``image``, input pixels for
  ``input``), ``scores`` FP32 [D], ``labels`` INT64 [D], ``batch_index`` INT64 [D], ``masks`` BYTES [D]
  (COCO RLE JSON, instance segmentation only), and ``attention/<layer>`` FP32 [N, C].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eca_serve.repository import EntryConfig
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.manager import ModelManager

INPUT, IMAGE = "input", "image"
LOGITS, PROBABILITIES = "logits", "probabilities"
MASKS = "masks"
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "onnxruntime"), "torchscript": ("pytorch_libtorch", "pytorch"),
             "eager": ("pytorch_libtorch", "pytorch")}
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: full shape, -1 for variable dimensions (the first is N or D)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def is_classifier(config: EntryConfig) -> bool:
    return config.task == "classification"


def input_specs(config: EntryConfig) -> list[TensorSpec]:
    """The two alternative inputs: preprocessed tensors or encoded images."""
    height, width = config.input.size if is_classifier(config) and config.input.size else (-1, -1)
    return [TensorSpec(INPUT, "FP32", (-1, 3, height, width)), TensorSpec(IMAGE, "BYTES", (-1,))]


def output_specs(config: EntryConfig) -> list[TensorSpec]:
    """Every output the model can return, in response order."""
    attention = [TensorSpec(a.output, "FP32", (-1, *a.item_shape())) for a in config.attention]
    if is_classifier(config):
        return [TensorSpec(LOGITS, "FP32", (-1, config.num_classes)),
                TensorSpec(PROBABILITIES, "FP32", (-1, config.num_classes)), *attention]
    boxes = [TensorSpec("boxes", "FP32", (-1, 4)), TensorSpec("scores", "FP32", (-1,)),
             TensorSpec("labels", "INT64", (-1,)), TensorSpec("batch_index", "INT64", (-1,))]
    masks = [TensorSpec(MASKS, "BYTES", (-1,))] if config.task == "instance_segmentation" else []
    return [*boxes, *masks, *attention]


def model_metadata(pipeline: ModelPipeline, versions: list[int], backend: str) -> dict[str, Any]:
    """``GET /v2/models/{m}``: name, versions (strings), platform, inputs and outputs."""
    config = pipeline.config
    return {"name": config.name, "versions": [str(v) for v in versions], "platform": PLATFORMS[backend][0],
            "inputs": [s.metadata() for s in input_specs(config)],
            "outputs": [s.metadata() for s in output_specs(config)]}


def model_config(pipeline: ModelPipeline, backend: str) -> dict[str, Any]:
    """``GET /v2/models/{m}/config`` in Triton's shape.

    Classifiers batch along the first dimension, so their dims leave it out (``max_batch_size`` > 0).
    Detector outputs have one row per detection, not per image: Triton would call that a model
    without batching (``max_batch_size`` 0, full shapes), even though eca-serve still batches
    same-size images behind the scenes.
    """
    config, policy = pipeline.config, pipeline.batcher.policy
    batched = is_classifier(config)
    platform, backend_name = PLATFORMS[backend]
    return {
        "name": config.name, "platform": platform, "backend": backend_name,
        "max_batch_size": policy.max_batch_size if batched else 0,
        "input": [_triton_tensor(s, batched) for s in input_specs(config)],
        "output": [_triton_tensor(s, batched) for s in output_specs(config)],
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
    """``POST /v2/repository/index``: every expected, loaded or unloaded model version and its state."""
    loaded = {(n, v): p for n, versions in manager.pipelines.items() for v, p in versions.items()}
    entries = []
    for name, version in sorted(manager.expected | set(loaded) | manager.unloaded):
        pipeline = loaded.get((name, version))
        if (name, version) in manager.unloaded and pipeline is None:
            state, reason = "UNAVAILABLE", "unloaded"  # as Triton lists a model after its unload
        elif pipeline is not None:
            reason = pipeline.unready_reason
            state, reason = ("READY", "") if reason is None else ("UNAVAILABLE", reason)
        elif manager.loading_error:
            state, reason = "UNAVAILABLE", manager.loading_error
        else:
            state, reason = "LOADING", ""
        entries.append({"name": name, "version": str(version), "state": state, "reason": reason})
    return entries
