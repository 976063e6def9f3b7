"""Attention statistics as a drift signal: a reference summary per layer, a rolling window, a PSI score.

Every request already computes every attention layer (one graph serves classify and attention), so
the summary is free to collect. Per layer and image, the attention vector ``a`` [C] is reduced to one
scalar, its standardised distance to the reference mean::

    d = sqrt(mean_c(((a_c - mean_c) / scale_c) ** 2))

The reference holds the mean and scale vectors [C] of held-out data and the equal-mass bin edges of
``d`` over that data. While serving, the bins of the last ``window`` images are counted, and a layer's
score is the population stability index (PSI) of those counts against the reference's equal masses:
about (bins - 1) / n for data like the reference (0.02 for 512 images), with the usual reading of
< 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift. Memory is ``window`` bytes per layer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from eca_serve.errors import ConfigError

DEFAULT_BINS = 10
DEFAULT_WINDOW = 512
MIN_IMAGES = 100  # before this many, PSI noise (~(bins - 1) / n = 0.09) is as large as a moderate shift
DEFAULT_BUDGET = 0.01  # monitoring time / inference time
_MIN_SCALE = 1e-3  # a channel that never moved in the reference must not turn noise into drift


@dataclass(frozen=True)
class LayerReference:
    """One layer's reference: ``mean`` and ``scale`` [C] float32, ``edges`` [bins - 1] of the distances."""

    name: str
    mean: np.ndarray
    scale: np.ndarray
    edges: np.ndarray

    def distances(self, weights: np.ndarray) -> np.ndarray:
        """Standardised distances [N] of attention ``weights`` [N, C] to the reference mean."""
        z = (np.asarray(weights, np.float32).reshape(len(weights), -1) - self.mean) / self.scale
        return np.sqrt(np.mean(z * z, axis=1))


@dataclass(frozen=True)
class DriftReference:
    """The reference summary of every attention layer of a model, from ``images`` held-out images."""

    layers: list[LayerReference]
    images: int
    source: str = ""

    @property
    def bins(self) -> int:
        return len(self.layers[0].edges) + 1 if self.layers else DEFAULT_BINS

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "source": self.source, "bins": self.bins, "layers": [
            {"name": l.name, "mean": _floats(l.mean), "scale": _floats(l.scale), "edges": _floats(l.edges)} for l in self.layers]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DriftReference:
        layers = [LayerReference(l["name"], np.asarray(l["mean"], np.float32), np.asarray(l["scale"], np.float32),
                                 np.asarray(l["edges"], np.float32)) for l in data["layers"]]
        return cls(layers, int(data["images"]), str(data.get("source", "")))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"invalid drift reference {path}: {exc}") from None


def build_reference(samples: Mapping[str, np.ndarray], bins: int = DEFAULT_BINS, source: str = "") -> DriftReference:
    """The reference of attention ``samples``: layer name -> weights [N, C] of N held-out images.

    Raises:
        ConfigError: fewer images than ``2 * bins`` or layers with different image counts.
    """
    counts = {len(v) for v in samples.values()}
    if len(counts) != 1 or min(counts) < 2 * bins:
        raise ConfigError(f"a drift reference needs at least {2 * bins} images per layer, got {sorted(counts)}")
    layers = []
    for name, weights in samples.items():
        weights = np.asarray(weights, np.float32).reshape(len(weights), -1)
        partial = LayerReference(name, weights.mean(0), np.maximum(weights.std(0), _MIN_SCALE), np.empty(0, np.float32))
        edges = np.quantile(partial.distances(weights), np.arange(1, bins) / bins).astype(np.float32)
        layers.append(LayerReference(name, partial.mean, partial.scale, edges))
    return DriftReference(layers, counts.pop(), source)


def psi(counts: np.ndarray) -> float:
    """Population stability index of bin ``counts`` [B] against equal reference masses 1 / B.

    Half a count is added to every bin, so a nearly empty window reads as no drift rather than as a
    shift (and no log of zero).
    """
    expected = 1.0 / len(counts)
    observed = (counts + 0.5) / (counts.sum() + 0.5 * len(counts))
    return float(np.sum((observed - expected) * np.log(observed / expected)))


@dataclass(frozen=True)
class DriftScores:
    """The recent window against the reference: overall ``score`` (mean of the layers), per-layer scores.

    Scores are None until the window holds `MIN_IMAGES` images (or is full): a PSI of a handful of
    images is noise (about (bins - 1) / n), not drift.
    """

    score: float | None
    layers: list[tuple[str, float | None]]
    images: int  # in the window now: the last sampled images, at most the window
    sampled: int = 0  # summarised since start (the sample of `seen` the budget allows)
    seen: int = 0  # run through the model since start, sampled or not
    min_images: int = MIN_IMAGES  # in the window before a score


class DriftMonitor:
    """The rolling summary of the last ``window`` images of one model; thread-safe (batches run in threads).

    Every layer is handled at once: an image's attention is one row of all layers' weights
    concatenated in reference order ([sum of C]), so a batch costs a handful of numpy calls
    whatever the number of layers (measured: see ``bench/drift_bench.py``).
    """

    def __init__(self, reference: DriftReference, window: int = DEFAULT_WINDOW, budget: float = DEFAULT_BUDGET) -> None:
        if window < 1:
            raise ConfigError(f"drift window must be >= 1, got {window}")
        self.reference, self.window, self.budget = reference, window, budget
        self._inference_s = self._observe_s = 0.0
        self.names = [l.name for l in reference.layers]
        self._mean = np.concatenate([l.mean for l in reference.layers])
        self._scale = np.concatenate([l.scale for l in reference.layers])
        sizes = np.array([len(l.mean) for l in reference.layers])
        self._starts, self._sizes = np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes
        self._edges = np.stack([l.edges for l in reference.layers])  # [L, bins - 1]
        self._ring = np.zeros((len(self.names), window), np.int8)  # bin of each recent image, per layer
        self._counts = np.zeros((len(self.names), reference.bins), np.int64)
        self._seen, self._served, self._lock = 0, 0, threading.Lock()

    def observe(self, attention: Mapping[str, np.ndarray]) -> None:
        """Add a batch: layer name -> weights [N, C] (every layer of the reference)."""
        self.observe_rows(np.concatenate([np.asarray(attention[n], np.float32).reshape(len(attention[n]), -1) for n in self.names], axis=1))

    def due(self, inference_s: float, images: int = 0) -> bool:
        """Whether to summarise the batch of ``images`` that took ``inference_s``: monitoring stays within ``budget`` of inference.

        A model so fast that summarising every image would cost more (a 64 px classifier runs in
        0.5 ms) has a sample of its batches summarised instead, spread evenly over time; a model of
        a few milliseconds or more has every batch summarised.
        """
        self._inference_s += inference_s
        self._served += images
        return self._observe_s <= self.budget * self._inference_s

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` spent summarising a batch against the budget."""
        self._observe_s += seconds

    def observe_rows(self, rows: np.ndarray) -> None:
        """Add a batch of rows [N, sum of C]: each image's layers concatenated in reference order."""
        z = (rows - self._mean) / self._scale
        distances = np.sqrt(np.add.reduceat(z * z, self._starts, axis=1) / self._sizes)  # [N, L]
        bins = (distances[:, :, None] > self._edges[None]).sum(axis=2)  # [N, L]
        layers = np.arange(len(self.names))
        with self._lock:
            for row in bins:
                slot = self._seen % self.window
                if self._seen >= self.window:
                    self._counts[layers, self._ring[:, slot]] -= 1
                self._ring[:, slot] = row
                self._counts[layers, row] += 1
                self._seen += 1

    def scores(self) -> DriftScores:
        with self._lock:
            counts, sampled = self._counts.copy(), self._seen
        images, least = min(sampled, self.window), min(MIN_IMAGES, self.window)
        seen = max(self._served, sampled)  # `observe` called directly counts as seen
        if images < least:
            return DriftScores(None, [(name, None) for name in self.names], images, sampled, seen, least)
        layers = [(name, psi(c)) for name, c in zip(self.names, counts)]
        overall = float(np.mean([s for _, s in layers])) if layers else 0.0
        return DriftScores(overall, layers, images, sampled, seen, least)


def _floats(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).reshape(-1)]
