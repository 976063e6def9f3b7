"""Pipeline results -> response schemas."""

from __future__ import annotations

import numpy as np

from eca_serve.api import schemas
from eca_serve.pipelines.base import LayerWeights, ModelPipeline, StageTimes
from eca_serve.pipelines.classification import ImageResult
from eca_serve.pipelines.detection import DetectionResult


def timing(times: StageTimes) -> schemas.Timing:
    return schemas.Timing(preprocess_ms=round(times.preprocess * 1e3, 3), queue_ms=round(times.queue * 1e3, 3),
                          inference_ms=round(times.inference * 1e3, 3), postprocess_ms=round(times.postprocess * 1e3, 3))


def predictions(result: ImageResult) -> list[schemas.Prediction]:
    return [schemas.Prediction(index=l.index, label=l.label, score=l.score) for l in result.labels]


def detections(result: DetectionResult) -> list[schemas.DetectionItem]:
    return [schemas.DetectionItem(box=d.box, label=d.label, category=d.category, score=d.score, mask=d.mask)
            for d in result.detections]


def layers(items: list[LayerWeights]) -> list[schemas.LayerAttention]:
    return [schemas.LayerAttention(name=l.name, kind=l.kind, channels=l.channels, k_size=l.k_size,
                                   weights=np.round(l.weights.astype(np.float64), 6).tolist()) for l in items]


def summary(pipeline: ModelPipeline, versions: list[int]) -> schemas.ModelSummary:
    c = pipeline.config
    return schemas.ModelSummary(name=c.name, version=c.version, task=c.task, architecture=c.architecture,
                                ready=pipeline.ready, versions=versions)


def detail(pipeline: ModelPipeline, versions: list[int], backend: str) -> schemas.ModelDetail:
    c = pipeline.config
    return schemas.ModelDetail(
        **summary(pipeline, versions).model_dump(), inputs=c.input.model_dump(mode="json"), categories=c.categories,
        attention_layers=[schemas.AttentionLayerInfo(name=a.name, kind=a.kind, channels=a.channels, k_size=a.k_size)
                          for a in c.attention],
        metrics=c.metrics, backend=backend, device=str(pipeline.backend.device),
    )
