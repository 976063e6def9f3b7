"""The ``quantization`` block of an INT8 entry's config.json: how it was made and what it costs in accuracy.

A leaf of `eca_serve.repository` (which re-exports both records), kept apart so that file stays small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineAccuracy(_Strict):
    """The INT8 graph's accuracy against FP32 when another engine runs it (fields as in `QuantizationSpec`)."""

    engine: Literal["openvino"]
    version: str
    top1_int8: float | None
    top1_drop: float
    agreement: float
    max_abs_prob_diff: float
    max_abs_attention_diff: float | None
    mean_abs_attention_diff: float | None
    attention_diff_per_layer: dict[str, float] = {}


class QuantizationSpec(_Strict):
    """How an INT8 entry was made from its FP32 parent and what it costs in accuracy.

    Accuracy fields compare the two graphs on the same ``eval_images``, preprocessed as the server
    does, the INT8 graph run by ONNX Runtime. Top-1 fields are None when the eval images carry no
    labels; the bound then applies to the disagreement (100 - ``agreement``), which bounds any top-1
    drop from above. ``openvino``: the same graph compiled by OpenVINO, the other engine that serves
    it (measured where openvino is installed); ``accepted`` then needs both drops within ``max_drop``.
    """

    parent_version: int = Field(ge=1)
    method: Literal["minmax", "entropy", "percentile"]
    format: Literal["QDQ"] = "QDQ"
    weights: str = "int8, per channel"
    activations: str = "uint8, per tensor"
    calibration_images: int = Field(ge=1)
    calibration_source: str
    excluded_nodes: list[str]
    attention_in_float: bool
    eval_images: int = Field(ge=1)
    eval_source: str
    top1_fp32: float | None
    top1_int8: float | None
    top1_drop: float = Field(description="percentage points (top-1, or disagreement when unlabelled)")
    max_drop: float
    agreement: float = Field(description="percent of images whose INT8 top-1 equals the FP32 top-1")
    max_abs_prob_diff: float
    max_abs_attention_diff: float | None
    mean_abs_attention_diff: float | None
    attention_diff_per_layer: dict[str, float] = {}
    accepted: bool
    onnxruntime: str
    openvino: EngineAccuracy | None = None
