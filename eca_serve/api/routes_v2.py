"""Open Inference Protocol (KServe v2 / Triton HTTP): health, metadata, config, statistics and infer.

Served by the same pipelines and batchers as v1. Tensors per task: `eca_serve.api.v2_models`.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import eca_serve
from eca_serve.api import v2_schemas
from eca_serve.api.deps import AppSettings, Plane
from eca_serve.api.schemas import ErrorBody
from eca_serve.api.errors import BodyTooLargeError, error_response
from eca_serve.api.uploads import read_body
from eca_serve.api.v2_codec import HEADER_LENGTH, encode_infer_response, parse_infer_request
from eca_serve.api.v2_infer import InferLimits, run_inference, shape_checker
from eca_serve.api.v2_models import model_config, model_metadata, model_stats, repository_index
from eca_serve.errors import InferenceRequestError, NotReadyError, UnsupportedMediaTypeError
from eca_serve.settings import Settings

router = APIRouter(prefix="/v2", tags=["v2"])
EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_repository"]
ERRORS = {s: {"model": ErrorBody, "description": '`{"error": "..."}`'} for s in (400, 404, 413, 415, 422, 503, 504)}
INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": v2_schemas.INFER_REQUEST_SCHEMA},
    "application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "JSON header of Inference-Header-Content-Length bytes, then binary tensors"}},
}}}
INFER_RESPONSES = {**ERRORS, 200: {"model": v2_schemas.InferResponse, "description": "JSON, or with binary outputs a "
                   "JSON header of Inference-Header-Content-Length bytes followed by the tensors"}}
# zlib wbits: 16 + 15 = gzip container; 15 = zlib container, which is what HTTP's "deflate" means
_DECODERS = {"gzip": 16 + 15, "x-gzip": 16 + 15, "deflate": 15}


@router.get("", responses={200: {"model": v2_schemas.ServerMetadata}})
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions served."""
    return {"name": "eca-serve", "version": eca_serve.__version__, "extensions": EXTENSIONS}


@router.get("/health/live", responses={200: {"model": v2_schemas.Live}})
async def live() -> dict[str, bool]:
    """200 while the process serves requests, whether or not models are loaded."""
    return {"live": True}


@router.get("/health/ready", responses=ERRORS)
async def ready(plane: Plane) -> Response:
    """200 once every model is loaded and warmed up; 503 while loading or draining."""
    readiness = plane.server_ready()
    return JSONResponse({"ready": True}) if readiness.ready else error_response(503, readiness.reason)


@router.get("/repository/index")
@router.post("/repository/index")
async def index(plane: Plane) -> list[dict[str, str]]:
    """Every model version of the repository and its state (READY, LOADING, UNLOADING, UNAVAILABLE + reason)."""
    return repository_index(plane.manager)


@router.get("/models/stats", responses=ERRORS)
async def all_stats(plane: Plane) -> dict[str, Any]:
    """Statistics of every loaded model version."""
    return {"model_stats": [model_stats(p) for p in plane.statistics()]}


@router.get("/models/{name}", responses={**ERRORS, 200: {"model": v2_schemas.ModelMetadata}})
@router.get("/models/{name}/versions/{version}", responses={**ERRORS, 200: {"model": v2_schemas.ModelMetadata}})
async def metadata(name: str, plane: Plane, settings: AppSettings, version: str | None = None) -> dict[str, Any]:
    """Name, versions, platform, inputs and outputs (-1 = variable dimension)."""
    return model_metadata(plane.model(name, version), plane.versions(name), settings.backend)


@router.get("/models/{name}/ready", responses={**ERRORS, 200: {"model": v2_schemas.ModelReady}})
@router.get("/models/{name}/versions/{version}/ready", responses={**ERRORS, 200: {"model": v2_schemas.ModelReady}})
async def model_ready(name: str, plane: Plane, version: str | None = None) -> dict[str, Any]:
    """200 when the model version is loaded and serving; 404 unknown, 503 loading."""
    readiness = plane.model_ready(name, version)
    if not readiness.ready:
        raise NotReadyError(readiness.reason)
    return {"name": name, "ready": True}


@router.get("/models/{name}/config", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/config", responses=ERRORS)
async def config(name: str, plane: Plane, settings: AppSettings, version: str | None = None) -> dict[str, Any]:
    """The model's configuration in Triton's shape (batching policy included)."""
    return model_config(plane.model(name, version), settings.backend)


@router.get("/models/{name}/stats", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/stats", responses=ERRORS)
async def stats(name: str, plane: Plane, version: str | None = None) -> dict[str, Any]:
    """Statistics of one version, or of every version of the model when none is named."""
    return {"model_stats": [model_stats(p) for p in plane.statistics(name, version)]}


@router.post("/models/{name}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
@router.post("/models/{name}/versions/{version}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
async def infer(name: str, request: Request, plane: Plane, settings: AppSettings, version: str | None = None) -> Response:
    """Inference on ``input`` (FP32 [N, 3, H, W]) or ``image`` (BYTES [N]); JSON or binary tensors."""
    pipeline = plane.model(name, version)
    body = await _read_infer_body(request, settings)
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH), shape_checker(pipeline.config, InferLimits.of(settings)))
    outputs = await plane.infer(pipeline, parsed, run_inference)
    head = {"model_name": name, "model_version": str(pipeline.config.version)}
    if parsed.id is not None:
        head["id"] = parsed.id
    content, header_length = encode_infer_response(head, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


async def _read_infer_body(request: Request, settings: Settings) -> bytes:
    """The body within ``max_body_bytes``, decompressed (gzip/deflate) within the same limit."""
    body = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _DECODERS:
        raise UnsupportedMediaTypeError(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none")
    return _decompress(body, _DECODERS[encoding], settings.max_body_bytes)


def _decompress(body: bytes, wbits: int, limit: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit + 1)  # bounded: a small bomb cannot expand past the limit
    except zlib.error as exc:
        raise InferenceRequestError(f"request body is not valid compressed data: {exc}") from None
    if len(data) > limit:
        raise BodyTooLargeError(f"decompressed request body exceeds the limit of {limit} bytes")
    if not decoder.eof:
        raise InferenceRequestError("compressed request body is truncated")
    return data
