"""v1 REST API: list models, classify, detect, attention."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from eca_serve.api import convert, schemas
from eca_serve.api.deps import AppSettings, Manager, Plane
from eca_serve.api.errors import UnknownQueryParameterError
from eca_serve.api.uploads import read_images
from eca_serve.errors import InvalidParameterError, NoDriftReferenceError, WrongTaskError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import ClassifyParams, DetectParams, StageTimes



async def _known_query(request: Request) -> None:
    """Refuse query parameters the route does not declare (400 naming them and the known ones)."""
    route = request.scope.get("route")
    known = _query_names(route.dependant) if route is not None else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise UnknownQueryParameterError(f"unknown query parameter {', '.join(map(repr, unknown))}; "
                                         f"this endpoint takes: {', '.join(sorted(known)) or 'none'}")


def _query_names(dependant: Any) -> set[str]:
    """Query parameter names of a FastAPI ``Dependant`` and of its sub-dependencies."""
    return {p.alias for p in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(_known_query)])
ERRORS = {s: {"model": schemas.ErrorBody} for s in (400, 404, 413, 415, 422, 503, 504)}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
                "type": "array", "items": {"type": "string", "format": "binary"}}}, "required": ["file"]}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
Version = Annotated[int | None, Query(ge=1, description="model version (default: newest)")]
DETECT = DetectParams()  # the defaults of the task, in one place
TopK = Annotated[int | None, Query(ge=1, le=1000, description="number of classes to return (default: min(5, classes))")]
Threshold = Annotated[float, Query(ge=0, le=1, description="drop detections scoring below this")]
MaxDetections = Annotated[int, Query(ge=1, le=1000, description="most detections per image")]
MaskFormat = Literal["rle", "polygon", "none"]


@router.get("/models", response_model=schemas.ModelList)
async def list_models(plane: Plane) -> schemas.ModelList:
    """Every served model version and whether it is ready."""
    return schemas.ModelList(models=[convert.summary(p, plane.versions(p.config.name)) for p in plane.models()])


@router.get("/models/{name}", response_model=schemas.ModelDetail, responses=ERRORS)
async def model_detail(name: str, plane: Plane, settings: AppSettings, version: Version = None) -> schemas.ModelDetail:
    """Task, inputs, categories, attention layers and metrics of a model."""
    return convert.detail(plane.model(name, version), plane.versions(name), settings.backend)


@router.get("/models/{name}/drift", response_model=schemas.DriftResponse, responses=ERRORS)
async def drift(name: str, plane: Plane, version: Version = None) -> schemas.DriftResponse:
    """How far the attention of recent requests has moved from the model's held-out reference."""
    pipeline = plane.model(name, version)
    if pipeline.drift is None:
        raise NoDriftReferenceError(f"model {name!r} has no drift reference (eca-serve calibrate-drift), or monitoring is off")
    scores = pipeline.drift.scores()
    return schemas.DriftResponse(model=name, version=pipeline.config.version, score=_round(scores.score),
                                 layers=[schemas.DriftLayer(name=n, score=_round(v)) for n, v in scores.layers],
                                 images_seen=scores.seen, images_sampled=scores.sampled, images_in_window=scores.images,
                                 min_images=scores.min_images, window=pipeline.drift.window, requests=scores.images)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


async def _images(request: Request, settings: AppSettings) -> list:
    return await read_images(request, max_body=settings.max_body_bytes, max_images=settings.max_images_per_request,
                             timeout_s=settings.body_timeout_s)


@router.post("/models/{name}/classify", response_model=schemas.ClassifyResponse, responses=ERRORS, openapi_extra=IMAGE_BODY)
async def classify(name: str, request: Request, manager: Manager, settings: AppSettings,
                   top_k: TopK = None, version: Version = None) -> Response:
    """Top-k classes of each uploaded image (multipart field ``file``, repeatable, or a raw image body)."""
    pipeline = _pipeline(manager, name, version, "classify")
    params = ClassifyParams.parse({"top_k": top_k})
    times = StageTimes()
    results = await pipeline.run(await _images(request, settings), params, times)
    return _json(convert.classify_body(pipeline.config, results, times))


@router.post("/models/{name}/detect", response_model=schemas.DetectResponse, responses=ERRORS, openapi_extra=IMAGE_BODY)
async def detect(
    name: str, request: Request, manager: Manager, settings: AppSettings, version: Version = None,
    score_threshold: Threshold = DETECT.score_threshold, max_detections: MaxDetections = DETECT.max_detections,
    masks: MaskFormat = DETECT.masks,
) -> Response:
    """Boxes (original pixels), classes, scores and instance masks of each uploaded image."""
    pipeline = _pipeline(manager, name, version, "detect")
    params = DetectParams.parse({"score_threshold": score_threshold, "max_detections": max_detections, "masks": masks})
    times = StageTimes()
    results = await pipeline.run(await _images(request, settings), params, times)
    return _json(convert.detect_body(pipeline.config, results, times))


@router.post("/models/{name}/attention", response_model=schemas.AttentionResponse, responses={
    **ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or a PNG plot with format=png"}},
    openapi_extra=IMAGE_BODY)
async def attention(
    name: str, request: Request, manager: Manager, settings: AppSettings, version: Version = None,
    top_k: TopK = None, format: Literal["json", "png"] = "json",
    score_threshold: Threshold = DETECT.score_threshold,
) -> Response:
    """Per-layer channel attention of each image, with the predictions of the same forward pass."""
    pipeline = manager.get(name, version)
    params = pipeline.params_type.parse({"top_k": top_k, "score_threshold": score_threshold, "masks": "none", "attention": True})
    images = await _images(request, settings)
    if format == "png" and len(images) != 1:
        raise InvalidParameterError("format=png plots one image; send exactly one")
    times = StageTimes()
    results = await pipeline.run(images, params, times)
    if format == "png":
        return await _png(pipeline, results[0].attention)
    return _json(convert.attention_body(pipeline.config, results, times))


def _json(body: BaseModel) -> Response:
    """``body`` as JSON bytes from pydantic's serializer, skipping FastAPI's second validation and
    stdlib ``json.dumps`` (measured: the bulk of an attention answer's cost, thousands of floats)."""
    return Response(body.model_dump_json(), media_type="application/json")


async def _png(pipeline: object, layers: list) -> Response:
    import asyncio

    from eca_serve.pipelines.plots import attention_png

    png = await asyncio.to_thread(attention_png, layers, f"{pipeline.config.name} channel attention")
    return Response(png, media_type="image/png")


def _pipeline(manager: Manager, name: str, version: int | None, action: str) -> ModelPipeline:
    """The pipeline of ``name``, refusing (before the upload is read) a model whose task does not ``action``."""
    pipeline = manager.get(name, version)
    if pipeline.action != action:
        raise WrongTaskError.for_model(name, pipeline.config.task, action)
    return pipeline
