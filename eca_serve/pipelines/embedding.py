"""Embedding: an image's pooled features, for retrieval and deduplication.

Served by every classifier entry whose graph has an ``embedding`` output (``config.embedding``: the
globally pooled features that feed the classifier head), from the same forward pass as its classification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from eca_serve.pipelines.contract import LayerWeights, RunParams
from eca_serve.pipelines.task import Column, Ran, Task, TensorSpec, with_attention
from eca_serve.repository import EMBEDDING_OUTPUT, EntryConfig


class EmbedParams(RunParams):
    """Embedding: the pooled features of each image."""

    normalize: bool = Field(True, description="scale each vector to unit L2 norm (cosine similarity = dot product)")


@dataclass
class Embedding:
    """The answer for one image of an embedding.

    Attributes:
        vector: float32 [D], unit length when normalised.
        norm: L2 norm of the features before normalisation.
        attention: Per-layer weights when asked for, in config order.
    """

    filename: str | None
    vector: np.ndarray
    norm: float
    attention: list[LayerWeights] | None = None


class EmbedResult(BaseModel):
    filename: str | None = Field(None, examples=["star.png"])
    dimension: int = Field(examples=[128])
    norm: float = Field(description="L2 norm of the pooled features before normalisation", examples=[7.31])
    embedding: list[float] = Field(description="the features; unit length when normalize is true")


def _output(config: EntryConfig) -> str:
    return config.embedding.output if config.embedding is not None else EMBEDDING_OUTPUT


def _width(config: EntryConfig) -> int:
    """D of the graph's embedding output [N, D] (-1 when the config does not say)."""
    if config.embedding is not None:
        return config.embedding.dim
    spec = next((o for o in config.outputs if o.name == EMBEDDING_OUTPUT), None)
    return spec.shape[-1] if spec is not None and spec.shape else -1


class EmbeddingTask(Task):
    """The graph's ``embedding`` output [D] per image, L2-normalised on request; v2 ``embedding`` FP32 [N, D]."""

    name = "embedding"
    action = "embed"
    params_type = EmbedParams
    result_type = EmbedResult
    extra = True

    def required_outputs(self, config: EntryConfig) -> set[str]:
        return {_output(config)}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        return [TensorSpec(EMBEDDING_OUTPUT, "FP32", (-1, _width(config)))]

    def result_of(self, ran: Ran, params: EmbedParams, config: EntryConfig) -> Embedding:
        features = np.asarray(ran.outputs[_output(config)], np.float32).reshape(-1)
        norm = float(np.linalg.norm(features.astype(np.float64)))
        vector = features / np.float32(norm) if params.normalize and norm > 0 else features
        return Embedding(ran.filename, vector.astype(np.float32, copy=False), norm, with_attention(config, ran, params))

    def columns(self, config: EntryConfig, results: list[Embedding]) -> dict[str, Column]:
        return {EMBEDDING_OUTPUT: np.stack([r.vector for r in results]).astype(np.float32, copy=False)}

    def v1_item(self, result: Embedding) -> EmbedResult:
        return EmbedResult(filename=result.filename, dimension=int(result.vector.size), norm=round(result.norm, 6),
                           embedding=result.vector.astype(np.float64).tolist())
