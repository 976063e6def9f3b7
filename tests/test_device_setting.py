"""The ``device`` setting is one of three canonical forms, however it is spelled."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from eca_serve.api.app import serving_options
from eca_serve.batching.policy import BatchPolicy
from eca_serve.settings import Settings, inflight_limit
from tests.serving_utils import running_server

SHIPPED = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize(("given", "stored"), [("CPU", "cpu"), (" cpu ", "cpu"), ("CUDA", "cuda"), ("Cuda:1", "cuda:1")])
def test_device_is_stored_lower_case(given: str, stored: str) -> None:
    assert Settings(device=given).device == stored


@pytest.mark.parametrize("given", ["gpu", "cuda:x", "cpu:0", "", "tpu"])
def test_an_unknown_device_is_refused_naming_the_accepted_forms(given: str) -> None:
    with pytest.raises(ValidationError, match="cpu, cuda or cuda:N"):
        Settings(device=given)


def test_upper_case_cuda_gets_the_cuda_defaults() -> None:
    settings = Settings(device="CUDA")
    assert inflight_limit(settings) == inflight_limit(Settings(device="cuda")) == 1024
    options = serving_options(settings)
    assert options.backend.device == "cuda"
    assert BatchPolicy.for_device(options.backend.device) == BatchPolicy.for_device("cuda")
    assert BatchPolicy.for_device("cuda") != BatchPolicy.for_device("cpu")


def test_upper_case_cpu_serves_the_int8_entry_as_cpu_does() -> None:
    """``device="CPU"`` used to refuse INT8 entries as "served on CPU only, not on CPU"."""
    settings = Settings(model_repository=SHIPPED, device="CPU", models=["shapes_classifier"], grpc_port=0)
    with running_server(settings) as (base, _):
        versions = httpx.get(f"{base}/v2/models/shapes_classifier", timeout=10).json()["versions"]
        int8_ready = httpx.get(f"{base}/v2/models/shapes_classifier/versions/2/ready", timeout=10)
    assert "2" in versions
    assert int8_ready.status_code == 200
