"""Task `Result`s -> v1 response bodies (the HTTP API and ``eca-serve predict`` print the same ones)."""

from __future__ import annotations

import numpy as np

from eca_serve.api import schemas
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import LayerWeights, Result, StageTimes
from eca_serve.pipelines.task import Task
from eca_serve.repository import EntryConfig


def timing(times: StageTimes) -> schemas.Timing:
    return schemas.Timing(preprocess_ms=round(times.preprocess * 1e3, 3), queue_ms=round(times.queue * 1e3, 3),
                          inference_ms=round(times.inference * 1e3, 3), postprocess_ms=round(times.postprocess * 1e3, 3))


def layers(items: list[LayerWeights]) -> list[schemas.LayerAttention]:
    return [schemas.LayerAttention(name=l.name, kind=l.kind, channels=l.channels, k_size=l.k_size, shape=l.shape,
                                   weights=np.round(l.weights.astype(np.float64), 6).tolist()) for l in items]


def task_body(config: EntryConfig, task: Task, results: list[Result], times: StageTimes) -> schemas.TaskResponse:
    """The body of ``POST /v1/models/{name}/{task.action}``."""
    return schemas.response_model(task)(model=config.name, version=config.version, timing=timing(times),
                                        results=[task.v1_item(r) for r in results])


def attention_body(config: EntryConfig, task: Task, results: list[Result], times: StageTimes) -> schemas.AttentionResponse:
    """The body of ``POST /v1/models/{name}/attention``: layers plus ``task``'s answer of the same pass."""
    return schemas.AttentionResponse(
        model=config.name, version=config.version, timing=timing(times),
        results=[schemas.AttentionResult(filename=r.filename, layers=layers(r.attention or []), **task.attention_fields(r))
                 for r in results])


def summary(pipeline: ModelPipeline, versions: list[int]) -> schemas.ModelSummary:
    c = pipeline.config
    return schemas.ModelSummary(name=c.name, version=c.version, task=c.task, architecture=c.architecture,
                                ready=pipeline.ready, versions=versions)


def detail(pipeline: ModelPipeline, versions: list[int], backend: str) -> schemas.ModelDetail:
    c = pipeline.config
    return schemas.ModelDetail(
        **summary(pipeline, versions).model_dump(), inputs=c.input.model_dump(mode="json"), categories=c.categories,
        attention_layers=[schemas.AttentionLayerInfo(name=a.name, kind=a.kind, channels=a.channels, k_size=a.k_size, shape=a.shape)
                          for a in c.attention],
        metrics=c.metrics, backend=getattr(pipeline.backend, "kind", backend), device=str(pipeline.backend.device),
    )
