"""The RPCs of ``inference.GRPCInferenceService``, answering what the HTTP v2 endpoints answer.

Every answer comes from the data plane that HTTP shares (`eca_serve.dataplane.DataPlane`): model lookup,
versions, readiness, statistics, refusal and inference. Errors map to status codes by their type, in the
table HTTP uses too (`eca_serve.api.errors.STATUSES`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
import weakref
from typing import Awaitable, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

import eca_serve
from eca_serve import errors
from eca_serve.api.errors import grpc_code_name_of
from eca_serve.api.grpc.metrics import GrpcMetrics
from eca_serve.api.grpc.protocol import SERVICE, messages, rpc_types
from eca_serve.api.grpc.tensors import fill_model_infer_response, parse_model_infer
from eca_serve.api.metrics import ServerMetrics
from eca_serve.api.v2_codec import InferRequest, ShapeCheck, request_timeout_s
from eca_serve.api.v2_infer import InferLimits, run_inference, shape_checker
from eca_serve.api.v2_models import model_config, model_metadata, model_stats, repository_index
from eca_serve.dataplane import DataPlane, InflightLimitError  # noqa: F401 - InflightLimitError re-exported (it lived here)
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.settings import Settings

log = logging.getLogger("eca_serve.api.grpc")
EXTENSIONS = ["classification", "statistics", "model_repository"]
UNTRACKED = ("ServerLive", "ServerReady")  # probes: never refused, not in-flight work
INTERNAL_MESSAGE = "internal error (see the server log)"
INFER = "ModelInfer"
# A call ended this close to its deadline ended by it: the client's own deadline timer cancels the call a
# transit time before the server's copy expires, and `with_deadline` made the request timeout that deadline.
DEADLINE_SLACK_S = 0.1
Rpc = Callable[[Message, grpc.aio.ServicerContext], Awaitable[Message]]


def status_of(exc: Exception) -> grpc.StatusCode:
    """gRPC status code of a typed error (`eca_serve.api.errors.STATUSES`); INTERNAL for anything unexpected."""
    return grpc.StatusCode[grpc_code_name_of(exc)]


class InferenceService:
    """The RPC implementations over the server's data plane.

    Args:
        plane: The data plane HTTP shares.
        settings: The server's settings (request limits, backend name).
        metrics: The server's metrics, which gRPC calls and cancellations join.
    """

    def __init__(self, plane: DataPlane, settings: Settings, metrics: ServerMetrics) -> None:
        self.plane, self.settings = plane, settings
        self.server_metrics, self.metrics = metrics, GrpcMetrics(metrics)
        # Per served pipeline, built on its first request (a reloaded model is a new pipeline).
        self._checkers: weakref.WeakKeyDictionary[ModelPipeline, ShapeCheck] = weakref.WeakKeyDictionary()

    async def ServerLive(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerLiveResponse(live=True)

    async def ServerReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerReadyResponse(ready=self.plane.server_ready().ready)

    async def ModelReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version).ready)

    async def ServerMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerMetadataResponse(name="eca-serve", version=eca_serve.__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        pipeline = self.plane.model(request.name, request.version)
        body = model_metadata(pipeline, self.plane.versions(request.name), self.settings.backend)
        return json_format.ParseDict(body, messages().ModelMetadataResponse(), ignore_unknown_fields=True)

    async def ModelConfig(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        body = {"config": model_config(self.plane.model(request.name, request.version), self.settings.backend)}
        return json_format.ParseDict(body, messages().ModelConfigResponse(), ignore_unknown_fields=True)

    async def ModelStatistics(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        body = {"model_stats": [model_stats(p) for p in self.plane.statistics(request.name, request.version)]}
        return json_format.ParseDict(body, messages().ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        entries = [e for e in repository_index(self.plane.manager) if not request.ready or e["state"] == "READY"]
        return json_format.ParseDict({"models": entries}, messages().RepositoryIndexResponse())

    async def ModelInfer(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        pipeline = self.plane.model(request.model_name, request.model_version)
        parsed = parse_model_infer(request, self._checker(pipeline))
        outputs = await self.plane.infer(pipeline, with_deadline(parsed, context.time_remaining()), run_inference)
        response = messages().ModelInferResponse(model_name=request.model_name, model_version=str(pipeline.config.version),
                                                 id=request.id)
        fill_model_infer_response(response, outputs)
        return response

    def _checker(self, pipeline: ModelPipeline) -> ShapeCheck:
        check = self._checkers.get(pipeline)
        if check is None:
            check = self._checkers[pipeline] = shape_checker(pipeline.config, InferLimits.of(self.settings))
        return check

    def rpc_handler(self, name: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        """RPC ``name`` on raw bytes: parsing, refusal, in-flight count, status codes, metrics and a log line."""
        request_type, _ = rpc_types()[name]
        implementation: Rpc = getattr(self, name)
        tracked = name not in UNTRACKED

        async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            start, request_id = time.perf_counter(), _request_id(context)
            context.set_trailing_metadata((("x-request-id", request_id),))
            code, model, counted, admitted = grpc.StatusCode.OK, "", False, False
            try:
                if tracked:
                    self.plane.enter()
                    counted = True
                if name == INFER:  # admitted or refused on the model name alone, before the tensors are parsed
                    model = peek_model_name(data) or ""
                    admitted = self.plane.admit(model)
                request = _parse(request_type, data)
                model = model or getattr(request, "model_name", "") or getattr(request, "name", "")
                if name == INFER and not admitted:
                    admitted = self.plane.admit(model)
                return (await implementation(request, context)).SerializeToString()
            except asyncio.CancelledError:
                expired = _expired(context, DEADLINE_SLACK_S)
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                if name == INFER:
                    self.server_metrics.observe_cancel(model, "deadline" if expired else "disconnect")
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status code
                code = status_of(exc)
                if name == INFER and isinstance(exc, errors.RequestTimeoutError):
                    self.server_metrics.observe_cancel(model, "deadline" if _expired(context, DEADLINE_SLACK_S) else "timeout")
                if code == grpc.StatusCode.INTERNAL:
                    log.error("gRPC %s failed", name, exc_info=exc, extra={"request_id": request_id})
                await context.abort(code, INTERNAL_MESSAGE if code == grpc.StatusCode.INTERNAL else str(exc) or type(exc).__name__)
                raise  # unreachable: abort raises
            finally:
                if counted:
                    self.plane.leave()
                if admitted:
                    self.plane.release(model)
                self.metrics.observe(model, name, code, time.perf_counter() - start)
                _log(name, request_id, code)
        return handle


def with_deadline(request: InferRequest, remaining_s: float | None) -> InferRequest:
    """``request`` whose ``timeout`` parameter is at most the client's remaining deadline."""
    if remaining_s is None:
        return request
    if remaining_s <= 0:
        raise errors.RequestTimeoutError("the client's deadline passed before inference started")
    asked = request_timeout_s(request.parameters)
    timeout_s = remaining_s if asked is None else min(asked, remaining_s)
    return dataclasses.replace(request, parameters={**request.parameters, "timeout": max(1, int(timeout_s * 1e6))})


def _parse(request_type: type, data: bytes) -> Message:
    try:
        return request_type.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise errors.InferenceRequestError(f"malformed {request_type.DESCRIPTOR.name}: {exc}") from None


def peek_model_name(data: bytes) -> str | None:
    """``model_name`` (field 1) of a serialized ModelInferRequest when it comes first, as protobuf writes it; else None.

    Reads a tag and a length only: a request refused at its model's limit costs no parse of its tensors.
    """
    if not data or data[0] != 0x0A:  # field 1, length-delimited
        return None
    length, shift, i = 0, 0, 1
    while i < len(data) and i < 6:
        byte = data[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            try:
                return data[i : i + length].decode("utf-8") if i + length <= len(data) else None
            except UnicodeDecodeError:
                return None
        shift += 7
    return None


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:128]
    return uuid.uuid4().hex


def _expired(context: grpc.aio.ServicerContext, slack_s: float = 0.0) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= slack_s


def _log(rpc: str, request_id: str, code: grpc.StatusCode) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("request", extra={"request_id": request_id, "protocol": "grpc", "path": f"/{SERVICE}/{rpc}", "status": code.name})
