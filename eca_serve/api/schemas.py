"""Response schemas of the v1 API (they are the OpenAPI docs' examples too)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field, create_model

from eca_serve.pipelines.classification import ClassifyResult, Prediction
from eca_serve.pipelines.detection import DetectionItem, DetectResult
from eca_serve.pipelines.task import Task
from eca_serve.pipelines.tasks import registered_tasks

__all__ = ["ClassifyResult", "DetectResult", "DetectionItem", "Prediction", "TaskResponse", "response_model"]


class ModelSummary(BaseModel):
    name: str = Field(examples=["shapes_classifier"])
    version: int = Field(examples=[1])
    task: str = Field(description="the entry's task (config.json)", examples=registered_tasks()[:1])
    architecture: str = Field(examples=["eca_resnet18"])
    ready: bool
    versions: list[int] = Field(examples=[[1]])


class ModelList(BaseModel):
    models: list[ModelSummary]


class AttentionLayerInfo(BaseModel):
    name: str = Field(examples=["layer1.0.eca"])
    kind: str = Field(examples=["eca"])
    channels: int = Field(examples=[16])
    k_size: int | None = Field(examples=[3])
    shape: list[int] | None = Field(None, examples=[[2, 64]],
                                    description="per-image weight shape when not [channels] (resnest: radix, C; dgc: heads, C_in); "
                                                "weights are flattened from it row-major")


class ModelDetail(ModelSummary):
    inputs: dict[str, Any] = Field(description="preprocessing: size, resize, crop, interpolation, mean, std, layout")
    categories: list[str]
    attention_layers: list[AttentionLayerInfo]
    metrics: dict[str, Any] = {}
    backend: str = Field(examples=["onnxruntime"])
    device: str = Field(examples=["cpu"])


class Timing(BaseModel):
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    postprocess_ms: float


class TaskResponse(BaseModel):
    """The v1 body of every task's action: ``results`` holds one item of the task's ``result_type`` per image."""

    model: str
    version: int
    results: list[Any]
    timing: Timing


@lru_cache(maxsize=None)
def response_model(task: Task) -> type[TaskResponse]:
    """``{Action}Response`` of ``task`` (e.g. ``ClassifyResponse``): the envelope with its typed results."""
    name = f"{task.action[:1].upper()}{task.action[1:]}Response"
    return create_model(name, __base__=TaskResponse, results=(list[task.result_type], ...))  # type: ignore[name-defined]


class LayerAttention(AttentionLayerInfo):
    weights: list[float] = Field(description="one weight in (0, 1) per channel (resnest/dgc: flattened from shape)")


class AttentionResult(BaseModel):
    filename: str | None = None
    predictions: list[Prediction] | None = Field(None, description="classifiers: top-k of the same forward pass")
    detections: list[DetectionItem] | None = Field(None, description="detectors: detections of the same pass")
    layers: list[LayerAttention]


class AttentionResponse(BaseModel):
    model: str
    version: int
    results: list[AttentionResult]
    timing: Timing


class DriftLayer(BaseModel):
    name: str = Field(examples=["layer3.1.eca"])
    score: float | None = Field(description="PSI of the recent window against the reference (null below 100 images)",
                                examples=[0.031])


class DriftResponse(BaseModel):
    model: str
    version: int
    score: float | None = Field(description="mean of the layers' scores: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted; "
                                "null until the window holds 100 images", examples=[0.028])
    layers: list[DriftLayer]
    images_seen: int = Field(description="images this version ran since start, sampled or not", examples=[2700])
    images_sampled: int = Field(description="images summarised since start: every batch when inference is slow enough, "
                                "else the sample ECA_SERVE_DRIFT_BUDGET allows", examples=[340])
    images_in_window: int = Field(description="sampled images the recent summary holds (up to the window)", examples=[340])
    min_images: int = Field(description="images the window must hold before a score", examples=[100])
    window: int = Field(description="most images the summary holds", examples=[512])
    requests: int = Field(description="deprecated, the same as images_in_window (it never counted requests)")


class ErrorBody(BaseModel):
    error: str = Field(examples=["unknown model 'resnet'"])
