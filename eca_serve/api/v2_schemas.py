"""OpenAPI descriptions of the v2 (Open Inference Protocol) bodies: documentation only.

The routes parse and write these bodies themselves (binary tensor extension, streaming limits), so
the models here feed ``/docs`` and ``/openapi.json`` and are never used to validate a request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from eca_serve.pipelines.classification import CLASSIFICATION_EXTENSION


class TensorMetadata(BaseModel):
    name: str = Field(examples=["image"])
    datatype: str = Field(examples=["BYTES"])
    shape: list[int] = Field(description="-1 marks a variable dimension", examples=[[-1]])


class ServerMetadata(BaseModel):
    name: str = Field(examples=["eca-serve"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", CLASSIFICATION_EXTENSION, "statistics", "model_repository"]])


class ModelMetadata(BaseModel):
    name: str = Field(examples=["shapes_classifier"])
    versions: list[str] = Field(examples=[["1", "2"]])
    platform: str = Field(examples=["onnxruntime_onnx"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str = Field(examples=["shapes_classifier"])
    ready: bool


class Live(BaseModel):
    live: bool


class OutputTensor(BaseModel):
    name: str = Field(examples=["probabilities"])
    datatype: str = Field(examples=["BYTES"])
    shape: list[int] = Field(examples=[[1, 2]])
    parameters: dict[str, Any] | None = Field(None, description='{"binary_data_size": n} when the data follows the JSON')
    data: list[Any] | None = Field(None, description="row-major values; absent when sent as binary",
                                   examples=[["0.991042:5:star", "0.004118:3:pentagon"]])


class InferResponse(BaseModel):
    model_name: str = Field(examples=["shapes_classifier"])
    model_version: str = Field(examples=["2"])
    id: str | None = None
    outputs: list[OutputTensor]


INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "echoed in the response"},
        "parameters": {"type": "object", "description": "score_threshold (0.5), max_detections (100), timeout "
                       "(microseconds), priority (higher first), binary_data_output"},
        "inputs": {"type": "array", "description": "exactly one: `image` BYTES [N] (encoded files) or `input` FP32 "
                   "[N, 3, H, W] (preprocessed)", "items": {"type": "object", "required": ["name", "shape", "datatype"],
                   "properties": {"name": {"type": "string", "enum": ["image", "input"]},
                                  "shape": {"type": "array", "items": {"type": "integer"}},
                                  "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
                                  "parameters": {"type": "object", "description": '{"binary_data_size": n} for binary data'},
                                  "data": {"type": "array", "description": "row-major values (JSON); omit for binary"}}}},
        "outputs": {"type": "array", "description": "all outputs when absent", "items": {"type": "object",
                    "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {
                        "type": "object", "description": "classification: k (top-k strings), binary_data: bool"}}}},
    },
    "example": {"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32",
                            "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]}],
                "outputs": [{"name": "probabilities", "parameters": {CLASSIFICATION_EXTENSION: 3}}]},
}
