"""Typed errors -> HTTP status codes and ``{"error": "..."}`` bodies (the only place that knows statuses)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from eca_serve import errors
from eca_serve.errors import NotReadyError, TooManyImagesError

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"


class BodyTooLargeError(errors.EcaServeError):
    """The request body is larger than the configured limit."""


class BodyTimeoutError(errors.EcaServeError):
    """The request body did not arrive within the configured time (a slow or stalled client)."""


class ClientGoneError(errors.EcaServeError):
    """The client disconnected before its request body arrived (nothing the server did wrong)."""


class BadFormError(errors.EcaServeError):
    """A multipart body without the expected image field(s)."""


class AdminDisabledError(errors.EcaServeError):
    """An admin endpoint was called while the admin API is off."""


class UnauthorizedError(errors.EcaServeError):
    """An admin endpoint was called without the right token."""


# Most specific first.
STATUS: list[tuple[type[Exception], int]] = [
    (NotReadyError, 503),
    (errors.QueueFullError, 503),
    (errors.ShuttingDownError, 503),
    (errors.RequestTimeoutError, 504),
    (errors.UnknownModelError, 404),
    (errors.NoDriftReferenceError, 404),
    (errors.InvalidImageError, 400),
    (errors.InferenceRequestError, 400),
    (errors.ImageTooLargeError, 413),
    (BodyTooLargeError, 413),
    (BodyTimeoutError, 408),
    (ClientGoneError, 499),  # nginx's "client closed request": counted apart from server errors
    (TooManyImagesError, 413),
    (errors.UnsupportedMediaTypeError, 415),
    (BadFormError, 422),
    (UnauthorizedError, 401),
    (AdminDisabledError, 403),
    (errors.InvalidParameterError, 422),
]


def status_of(exc: Exception) -> int:
    """HTTP status of a typed error; 500 for anything unexpected."""
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` with Retry-After on 503."""
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _eca_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    if status == 500:
        log.error("request %s failed", request.url.path, exc_info=exc)
        return error_response(500, "internal error (see the server log)")
    return error_response(status, str(exc) or type(exc).__name__)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(422, problems or "invalid request")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal error (see the server log)")


def install_error_handlers(app: FastAPI) -> None:
    """Every non-2xx answer of ``app`` gets the ``{"error": ...}`` body."""
    app.add_exception_handler(errors.EcaServeError, _eca_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
