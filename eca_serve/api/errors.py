"""Typed errors -> HTTP statuses, gRPC status codes and ``{"error": "..."}`` bodies (the only place that knows statuses)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eca_serve import errors

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"
INTERNAL_ERROR = "internal error (see the server log)"


class BodyTooLargeError(errors.TooLargeError):
    """The request body is larger than the configured limit."""


class BodyTimeoutError(errors.ClientError):
    """The request body did not arrive within the configured time (a slow or stalled client)."""


class ClientGoneError(errors.ClientError):
    """The client disconnected before its request body arrived (nothing the server did wrong)."""


class BadFormError(errors.InvalidParameterError):
    """A multipart body without the expected image field(s)."""


class UnknownQueryParameterError(errors.ClientError):
    """A query parameter the endpoint does not take (a typo such as ``topk`` would otherwise be ignored)."""


class AdminDisabledError(errors.ClientError):
    """An admin endpoint was called while the admin API is off."""


class UnauthorizedError(errors.ClientError):
    """An admin endpoint was called without the right token."""


# Most specific first: special statuses, then the groups of `eca_serve.errors`. The error's type alone decides
# the status in every protocol: (type, HTTP status, gRPC status code name). HTTP 400 is a malformed request
# (bytes, JSON, tensors, query names), 422 a well-formed one whose parameter values break a rule.
STATUSES: list[tuple[type[Exception], int, str]] = [
    (errors.UnknownModelError, 404, "NOT_FOUND"),
    (errors.NoDriftReferenceError, 404, "NOT_FOUND"),
    (errors.TooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (BodyTimeoutError, 408, "DEADLINE_EXCEEDED"),
    (ClientGoneError, 499, "CANCELLED"),  # nginx's "client closed request": counted apart from server errors
    (errors.UnsupportedMediaTypeError, 415, "INVALID_ARGUMENT"),
    (UnauthorizedError, 401, "UNAUTHENTICATED"),
    (AdminDisabledError, 403, "PERMISSION_DENIED"),
    (errors.InferenceRequestError, 400, "INVALID_ARGUMENT"),
    (errors.InvalidParameterError, 422, "INVALID_ARGUMENT"),
    (errors.ClientError, 400, "INVALID_ARGUMENT"),
    (errors.QueueFullError, 503, "RESOURCE_EXHAUSTED"),
    (errors.UnavailableError, 503, "UNAVAILABLE"),
    (errors.RequestTimeoutError, 504, "DEADLINE_EXCEEDED"),
    (errors.ServerFault, 500, "INTERNAL"),
]


def status_of(exc: Exception) -> int:
    """HTTP status of a typed error; 500 for a `ServerFault` and anything unexpected."""
    return next((status for cls, status, _ in STATUSES if isinstance(exc, cls)), 500)


def grpc_code_name_of(exc: Exception) -> str:
    """Name of the ``grpc.StatusCode`` of a typed error; ``INTERNAL`` for a `ServerFault` and anything unexpected."""
    return next((code for cls, _, code in STATUSES if isinstance(exc, cls)), "INTERNAL")


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with Retry-After on 503."""
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def server_fault(exc: BaseException, request_id: str | None, path: str) -> JSONResponse:
    """Log ``exc`` with its traceback and the request id; answer 500 with a body that tells nothing of it."""
    log.error("request %s on %s failed: %s: %s", request_id, path, type(exc).__name__, exc, exc_info=exc,
              extra={"request_id": request_id})
    return error_response(500, INTERNAL_ERROR)


def request_id_of(request: Request) -> str | None:
    """The id `eca_serve.api.tracking` gave the request (None for untracked paths)."""
    return getattr(request.state, "request_id", None)


async def _eca_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    if status == 500:
        return server_fault(exc, request_id_of(request), request.url.path)
    return error_response(status, str(exc) or type(exc).__name__)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(422, problems or "invalid request")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return server_fault(exc, request_id_of(request), request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Every non-2xx answer of ``app`` gets the ``{"error": ...}`` body."""
    app.add_exception_handler(errors.EcaServeError, _eca_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
