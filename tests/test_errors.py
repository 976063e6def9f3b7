"""Typed errors map to statuses by group; a server fault is answered 500 without internals, logged with the request id."""

import logging

import httpx
import numpy as np
import pytest

from eca_serve import errors
from eca_serve.api.errors import (AdminDisabledError, BadFormError, BodyTimeoutError, BodyTooLargeError, ClientGoneError,
                                  UnauthorizedError, status_of)
from eca_serve.settings import Settings
from tests.hostile_images import png_bytes
from tests.serving_utils import export_small_classifier, running_server

SECRET = "cannot open /secret/path/model.onnx"


@pytest.mark.parametrize(("exc", "status"), [
    (errors.UnknownModelError("m"), 404), (errors.ImageTooLargeError("x"), 413), (errors.TooManyImagesError("x"), 413),
    (BodyTooLargeError("x"), 413), (BodyTimeoutError("x"), 408), (ClientGoneError("x"), 499),
    (errors.UnsupportedMediaTypeError("x"), 415), (UnauthorizedError("x"), 401), (AdminDisabledError("x"), 403),
    (errors.InferenceRequestError("x"), 400), (errors.InvalidImageError("x"), 400), (errors.WrongTaskError("x"), 422),
    (BadFormError("x"), 422), (errors.InvalidParameterError("x"), 422), (errors.NotReadyError("x"), 503),
    (errors.QueueFullError("x"), 503), (errors.ShuttingDownError("x"), 503), (errors.RequestTimeoutError("x"), 504),
    (errors.ConfigError("x"), 500), (errors.BatchResultError("x"), 500), (RuntimeError("x"), 500),
])
def test_status_by_group_most_specific_first(exc: Exception, status: int) -> None:
    assert status_of(exc) == status


class BrokenBackend:
    """A classifier backend that fails the way a broken model file does."""

    def __init__(self, fault: Exception) -> None:
        self.fault = fault

    def infer(self, batch: np.ndarray) -> dict:
        raise self.fault


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    export_small_classifier(root)
    with running_server(Settings(model_repository=root, max_batch_size=1)) as (base, app):
        yield base, app.state.manager.pipelines["shapes_small"][1]


@pytest.mark.parametrize("fault", [RuntimeError(SECRET), errors.ConfigError(SECRET)], ids=["unexpected", "config_error"])
def test_server_fault_is_500_generic_and_logged_with_request_id(served, fault: Exception, caplog) -> None:
    base, pipeline = served
    working, pipeline.backend = pipeline.backend, BrokenBackend(fault)
    try:
        with caplog.at_level(logging.ERROR, logger="eca_serve"):
            response = httpx.post(f"{base}/v1/models/shapes_small/classify", content=png_bytes(),
                                  headers={"content-type": "image/png", "x-request-id": "req-42"}, timeout=60)
    finally:
        pipeline.backend = working
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (see the server log)"}
    assert SECRET not in response.text and response.headers["x-request-id"] == "req-42"
    faults = [r for r in caplog.records if getattr(r, "request_id", None) == "req-42" and r.levelno == logging.ERROR]
    assert len(faults) == 1 and faults[0].exc_info is not None and SECRET in str(faults[0].exc_info[1])
    assert "req-42" in faults[0].getMessage()
    ok = httpx.post(f"{base}/v1/models/shapes_small/classify", content=png_bytes(), headers={"content-type": "image/png"}, timeout=60)
    assert ok.status_code == 200
