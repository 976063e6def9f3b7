"""v1 REST API: list models, one action per registered task (classify, detect, embed, ...), attention, drift.

The task routes are one table built from the task registry (`build_router`): each task's action is
``POST /v1/models/{name}/{action}``, its query parameters are its parameter model's own fields, and its
body is the task's v1 result type.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from eca_serve.api import convert, schemas
from eca_serve.api.deps import AppSettings, Plane
from eca_serve.api.errors import UnknownQueryParameterError
from eca_serve.api.uploads import read_images
from eca_serve.errors import InvalidParameterError, NoDriftReferenceError
from eca_serve.pipelines.contract import RunParams, StageTimes
from eca_serve.pipelines.task import Task
from eca_serve.pipelines.tasks import all_tasks



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


router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(_known_query)])  # the routes every model has
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


def build_router() -> APIRouter:
    """``POST /v1/models/{name}/{action}`` for every registered task (the app includes `router` beside it).

    Separate routers, not `router` included in this one: a route of a nested router names only its own
    part of the path (``/models/{name}/attention``), and the metrics' endpoint label is that path.
    """
    v1 = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(_known_query)])
    routed: set[str] = set()
    for task in all_tasks():
        if task.action in routed:  # tasks sharing an action (detection, instance segmentation) share its route
            continue
        routed.add(task.action)
        v1.add_api_route(f"/models/{{name}}/{task.action}", _task_endpoint(task), methods=["POST"],
                         response_model=schemas.response_model(task), responses=ERRORS, openapi_extra=IMAGE_BODY,
                         summary=f"{task.action.capitalize()} ({task.name})", description=inspect.getdoc(task) or "")
    return v1


def _task_endpoint(task: Task) -> Callable[..., Any]:
    """``POST /v1/models/{name}/{task.action}``: ``task``'s answer for each uploaded image (multipart field
    ``file``, repeatable, or a raw image body)."""
    async def endpoint(name: str, request: Request, plane: Plane, settings: AppSettings, version: Version = None,
                       params: RunParams = Depends(task_parameters(task))) -> Response:
        pipeline = plane.model(name, version)
        served = pipeline.task_for_action(task.action)  # refused before the upload is read
        times = StageTimes()
        results = await pipeline.run(await _images(request, settings), params, times)
        return _json(convert.task_body(pipeline.config, served, results, times))
    endpoint.__name__ = task.action
    return endpoint


def task_parameters(task: Task) -> Callable[..., RunParams]:
    """A dependency reading ``task``'s own parameters (not the common `RunParams`) from the query string.

    Types, bounds, defaults and descriptions are the parameter model's: the route restates none of them.
    """
    params_type = task.params_type
    own = {n: f for n, f in params_type.model_fields.items() if n not in RunParams.model_fields}

    async def parse(**values: Any) -> RunParams:  # async: FastAPI runs a plain `def` dependency in a worker thread (a hop per request)
        return params_type.parse(values)

    parse.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                          annotation=Annotated[f.annotation, *f.metadata, Query(description=f.description)])
        for n, f in own.items()])
    return parse


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


@router.post("/models/{name}/attention", response_model=schemas.AttentionResponse, responses={
    **ERRORS, 200: {"content": {"image/png": {}}, "description": "JSON, or a PNG plot with format=png"}},
    openapi_extra=IMAGE_BODY)
async def attention(
    name: str, request: Request, plane: Plane, settings: AppSettings, version: Version = None,
    top_k: Annotated[int | None, Query(description="classifiers: classes to return (default: min(5, classes))")] = None,
    format: Literal["json", "png"] = "json",
    score_threshold: Annotated[float | None, Query(description="detectors: drop detections scoring below this")] = None,
) -> Response:
    """Per-layer channel attention of each image, with the entry's own task's answer of the same forward pass."""
    pipeline = plane.model(name, version)
    values = {"top_k": top_k, "score_threshold": score_threshold, "masks": "none", "attention": True}
    params = pipeline.params_type.parse(values)
    images = await _images(request, settings)
    if format == "png" and len(images) != 1:
        raise InvalidParameterError("format=png plots one image; send exactly one")
    times = StageTimes()
    results = await pipeline.run(images, params, times)
    if format == "png":
        return await _png(pipeline, results[0].attention)
    return _json(convert.attention_body(pipeline.config, pipeline.task, results, times))


def _json(body: BaseModel) -> Response:
    """``body`` as JSON bytes from pydantic's serializer, skipping FastAPI's second validation and
    stdlib ``json.dumps`` (measured: the bulk of an attention answer's cost, thousands of floats)."""
    return Response(body.model_dump_json(), media_type="application/json")


async def _png(pipeline: object, layers: list) -> Response:
    import asyncio

    from eca_serve.pipelines.plots import attention_png

    png = await asyncio.to_thread(attention_png, layers, f"{pipeline.config.name} channel attention")
    return Response(png, media_type="image/png")

