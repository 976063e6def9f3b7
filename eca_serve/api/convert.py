"""Task `Result`s -> v1 response bodies (the HTTP API and ``eca-serve predict`` print the same ones)."""

from __future__ import annotations

import numpy as np

from eca_serve.api import schemas
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import Classification, DetectionResult, LayerWeights, Result, StageTimes
from eca_serve.repository import EntryConfig


def timing(times: StageTimes) -> schemas.Timing:
    return schemas.Timing(preprocess_ms=round(times.preprocess * 1e3, 3), queue_ms=round(times.queue * 1e3, 3),
                          inference_ms=round(times.inference * 1e3, 3), postprocess_ms=round(times.postprocess * 1e3, 3))


def predictions(result: Classification) -> list[schemas.Prediction]:
    return [schemas.Prediction(index=l.index, label=l.label, score=l.score) for l in result.predictions]


def detections(result: DetectionResult) -> list[schemas.DetectionItem]:
    return [schemas.DetectionItem(box=d.box, label=d.label, category=d.category, score=d.score, mask=d.mask)
            for d in result.detections]


def layers(items: list[LayerWeights]) -> list[schemas.LayerAttention]:
    return [schemas.LayerAttention(name=l.name, kind=l.kind, channels=l.channels, k_size=l.k_size, shape=l.shape,
                                   weights=np.round(l.weights.astype(np.float64), 6).tolist()) for l in items]


def classify_body(config: EntryConfig, results: list[Classification], times: StageTimes) -> schemas.ClassifyResponse:
    """The body of ``POST /v1/models/{name}/classify``."""
    return schemas.ClassifyResponse(
        model=config.name, version=config.version, timing=timing(times),
        results=[schemas.ClassifyResult(filename=r.filename, predictions=predictions(r)) for r in results])


def detect_body(config: EntryConfig, results: list[DetectionResult], times: StageTimes) -> schemas.DetectResponse:
    """The body of ``POST /v1/models/{name}/detect``."""
    return schemas.DetectResponse(
        model=config.name, version=config.version, timing=timing(times),
        results=[schemas.DetectResult(filename=r.filename, width=r.width, height=r.height, detections=detections(r))
                 for r in results])


def attention_body(config: EntryConfig, results: list[Result], times: StageTimes) -> schemas.AttentionResponse:
    """The body of ``POST /v1/models/{name}/attention``: layers plus the predictions of the same pass."""
    return schemas.AttentionResponse(
        model=config.name, version=config.version, timing=timing(times),
        results=[_attention_result(r) for r in results])


def _attention_result(result: Result) -> schemas.AttentionResult:
    if isinstance(result, Classification):
        return schemas.AttentionResult(filename=result.filename, predictions=predictions(result), layers=layers(result.attention or []))
    return schemas.AttentionResult(filename=result.filename, detections=detections(result), layers=layers(result.attention or []))


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
