"""The RPCs of ``inference.GRPCInferenceService``, answering what the HTTP v2 endpoints answer.

Shares the HTTP app's state: its model manager, settings, in-flight counter (``app.state.inflight`` and
``max_inflight``), per-model admission (``app.state.admission``), draining flag and metrics registry. Errors map to status codes by their type, in
the table HTTP uses too (`eca_serve.api.errors.STATUSES`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
import weakref
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

import eca_serve
from eca_serve import errors
from eca_serve.api.errors import grpc_code_name_of
from eca_serve.api.grpc.metrics import GrpcMetrics
from eca_serve.api.grpc.protocol import SERVICE, messages, rpc_types
from eca_serve.api.grpc.tensors import fill_model_infer_response, parse_model_infer
from eca_serve.api.v2_codec import InferRequest, ShapeCheck, parse_decimal, request_timeout_s
from eca_serve.api.v2_infer import InferLimits, run_inference, shape_checker
from eca_serve.api.v2_models import model_config, model_metadata, model_stats, repository_index
from eca_serve.batching.admission import Admission
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.manager import ModelManager
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


class InflightLimitError(errors.QueueFullError):
    """The server's limit of requests in flight (HTTP and gRPC together) is reached."""


def status_of(exc: Exception) -> grpc.StatusCode:
    """gRPC status code of a typed error (`eca_serve.api.errors.STATUSES`); INTERNAL for anything unexpected."""
    return grpc.StatusCode[grpc_code_name_of(exc)]


class InferenceService:
    """The RPC implementations over one app's state (``app.state``)."""

    def __init__(self, state: Any, metrics: GrpcMetrics) -> None:
        self.state, self.metrics = state, metrics
        # Per served pipeline, built on its first request (a reloaded model is a new pipeline).
        self._checkers: weakref.WeakKeyDictionary[ModelPipeline, ShapeCheck] = weakref.WeakKeyDictionary()

    @property
    def manager(self) -> ModelManager:
        return self.state.manager

    @property
    def settings(self) -> Settings:
        return self.state.settings

    async def ServerLive(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerLiveResponse(live=True)

    async def ServerReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerReadyResponse(ready=self.manager.ready and not self.state.draining)

    async def ModelReady(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        try:
            ready = self._pipeline(request.name, request.version).ready
        except errors.NotReadyError:
            ready = False
        return messages().ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        return messages().ServerMetadataResponse(name="eca-serve", version=eca_serve.__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        pipeline = self._pipeline(request.name, request.version)
        body = model_metadata(pipeline, sorted(self.manager.pipelines[request.name]), self.settings.backend)
        return json_format.ParseDict(body, messages().ModelMetadataResponse(), ignore_unknown_fields=True)

    async def ModelConfig(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        body = {"config": model_config(self._pipeline(request.name, request.version), self.settings.backend)}
        return json_format.ParseDict(body, messages().ModelConfigResponse(), ignore_unknown_fields=True)

    async def ModelStatistics(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        if not request.name:
            pipelines = [self.manager.pipelines[c.name][c.version] for c, _ in self.manager.configs()]
        elif request.version:
            pipelines = [self._pipeline(request.name, request.version)]
        else:
            self._pipeline(request.name, None)
            pipelines = [p for _, p in sorted(self.manager.pipelines[request.name].items())]
        body = {"model_stats": [model_stats(p) for p in pipelines]}
        return json_format.ParseDict(body, messages().ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        entries = [e for e in repository_index(self.manager) if not request.ready or e["state"] == "READY"]
        return json_format.ParseDict({"models": entries}, messages().RepositoryIndexResponse())

    async def ModelInfer(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        pipeline = self._pipeline(request.model_name, request.model_version)
        parsed = parse_model_infer(request, self._checker(pipeline))
        outputs = await run_inference(pipeline, with_deadline(parsed, context.time_remaining()))
        response = messages().ModelInferResponse(model_name=request.model_name, model_version=str(pipeline.config.version),
                                                 id=request.id)
        fill_model_infer_response(response, outputs)
        return response

    def _checker(self, pipeline: ModelPipeline) -> ShapeCheck:
        check = self._checkers.get(pipeline)
        if check is None:
            check = self._checkers[pipeline] = shape_checker(pipeline.config, InferLimits.of(self.settings))
        return check

    def _pipeline(self, name: str, version: str) -> ModelPipeline:
        """The served pipeline; versions are strings, empty for the newest."""
        if not name:
            raise errors.InferenceRequestError("model name must be a non-empty string")
        if not version:
            return self.manager.get(name, None)
        number = parse_decimal(version)
        if number is None or number < 1:
            raise errors.InferenceRequestError(f"model version must be an integer >= 1, got {version[:40]!r}")
        return self.manager.get(name, number)

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
                    _refuse_if_busy(self.state)
                    self.state.inflight += 1
                    counted = True
                if name == INFER:  # admitted or refused on the model name alone, before the tensors are parsed
                    model = peek_model_name(data) or ""
                    admitted = _admit(self.state.admission, model)
                request = _parse(request_type, data)
                model = model or getattr(request, "model_name", "") or getattr(request, "name", "")
                if name == INFER and not admitted:
                    admitted = _admit(self.state.admission, model)
                return (await implementation(request, context)).SerializeToString()
            except asyncio.CancelledError:
                expired = _expired(context, DEADLINE_SLACK_S)
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                if name == INFER:
                    self.state.metrics.observe_cancel(model, "deadline" if expired else "disconnect")
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status code
                code = status_of(exc)
                if name == INFER and isinstance(exc, errors.RequestTimeoutError):
                    self.state.metrics.observe_cancel(model, "deadline" if _expired(context, DEADLINE_SLACK_S) else "timeout")
                if code == grpc.StatusCode.INTERNAL:
                    log.error("gRPC %s failed", name, exc_info=exc, extra={"request_id": request_id})
                await context.abort(code, INTERNAL_MESSAGE if code == grpc.StatusCode.INTERNAL else str(exc) or type(exc).__name__)
                raise  # unreachable: abort raises
            finally:
                if counted:
                    self.state.inflight -= 1
                if admitted:
                    self.state.admission.release(model)
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


def _refuse_if_busy(state: Any) -> None:
    if state.draining:
        raise errors.ShuttingDownError("server is shutting down")
    if state.inflight >= state.max_inflight:
        raise InflightLimitError(f"server is at its limit of {state.max_inflight} requests in flight; retry later")


def _admit(admission: Admission, model: str) -> bool:
    """Count a request of ``model`` (False for a name that is not served); InflightLimitError at its limit."""
    admitted = admission.try_admit(model)
    if admitted is False:
        raise InflightLimitError(admission.refusal(model))
    return bool(admitted)


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
