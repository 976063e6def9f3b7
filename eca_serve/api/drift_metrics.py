"""Attention drift scores in /metrics; labels are only model names loaded and layer names their configs declare."""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from eca_serve.pipelines.manager import ModelManager


class DriftCollector(Collector):
    """``eca_serve_attention_drift_score{model, version, layer}`` and the overall score, read at scrape time."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[GaugeMetricFamily]:
        layer = GaugeMetricFamily("eca_serve_attention_drift_score", "PSI of recent attention summaries against the "
                                  "reference, per layer (< 0.1 stable, > 0.25 shifted)", labels=["model", "version", "layer"])
        model = GaugeMetricFamily("eca_serve_attention_drift_model_score", "Mean attention drift score over a model's layers",
                                  labels=["model", "version"])
        window = GaugeMetricFamily("eca_serve_attention_drift_images", "Images in the drift window", labels=["model", "version"])
        for pipeline in self.manager.loaded():
            if pipeline.drift is None:
                continue
            labels, scores = [pipeline.config.name, str(pipeline.config.version)], pipeline.drift.scores()
            window.add_metric(labels, scores.images)
            if scores.score is None:  # too few images yet: no score rather than noise
                continue
            model.add_metric(labels, scores.score)
            for layer_name, score in scores.layers:
                layer.add_metric([*labels, layer_name], score)
        yield from (layer, model, window)
