"""The ``device`` setting is one of three canonical forms, however it is spelled."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from eca_serve.api.app import serving_options
from eca_serve.batching.policy import BatchPolicy
from eca_serve.kinds import Device
from eca_serve.repository import ServingSpec
from eca_serve.runtime import BackendOptions
from eca_serve.settings import Settings, inflight_limit
from tests.serving_utils import running_server

SHIPPED = Path(__file__).resolve().parent.parent / "models"
CUDA_HERE = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.parametrize(("given", "stored"), [("CPU", "cpu"), (" cpu ", "cpu"), ("CUDA", "cuda"), ("Cuda:1", "cuda:1")])
def test_device_is_stored_lower_case(given: str, stored: str) -> None:
    assert Settings(device=given).device == stored


@pytest.mark.parametrize("given", ["gpu", "cuda:x", "cpu:0", "", "tpu"])
def test_an_unknown_device_is_refused_naming_the_accepted_forms(given: str) -> None:
    with pytest.raises(ValidationError, match="cpu, cuda or cuda:N"):
        Settings(device=given)


def test_upper_case_cuda_is_the_cuda_device_everywhere() -> None:
    device = Settings(device="CUDA").device
    assert isinstance(device, Device) and device.is_cuda and device.index == 0
    assert inflight_limit(Settings(device="CUDA")) == inflight_limit(Settings(device="cuda")) == 1024
    assert BatchPolicy.for_device(device) == BatchPolicy.for_device("cuda") != BatchPolicy.for_device("cpu")
    assert BackendOptions(device="Cuda:1").device == Device("cuda:1")
    assert ServingSpec(device="CUDA").applies_to(Device("cuda:1"))
    assert not ServingSpec(device="CPU").applies_to("CUDA")


@pytest.mark.skipif(CUDA_HERE, reason="this machine's onnxruntime has a CUDA provider")
def test_cuda_without_a_gpu_runtime_is_served_as_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``"CUDA"`` on a CPU-only onnxruntime used to batch 32 at a time on the CPU provider, silently."""
    settings = Settings(model_repository=SHIPPED, device="CUDA", models=["shapes_classifier"], grpc_port=0)
    with caplog.at_level(logging.WARNING, logger="eca_serve.runtime.engines"):
        options = serving_options(settings)
    assert options.backend.device == "cpu"
    assert any("serving on cpu" in r.getMessage() for r in caplog.records)
    with running_server(settings) as (base, _):
        config = httpx.get(f"{base}/v2/models/shapes_classifier/versions/1/config", timeout=10).json()
        int8_ready = httpx.get(f"{base}/v2/models/shapes_classifier/versions/2/ready", timeout=10)
    # the entry's own block for CPU applies (batches of 4), not the CUDA default of 32
    assert config["max_batch_size"] == 4
    assert int8_ready.status_code == 200


def test_upper_case_cpu_serves_the_int8_entry_as_cpu_does() -> None:
    """``device="CPU"`` used to refuse INT8 entries as "served on CPU only, not on CPU"."""
    settings = Settings(model_repository=SHIPPED, device="CPU", models=["shapes_classifier"], grpc_port=0)
    with running_server(settings) as (base, _):
        versions = httpx.get(f"{base}/v2/models/shapes_classifier", timeout=10).json()["versions"]
        int8_ready = httpx.get(f"{base}/v2/models/shapes_classifier/versions/2/ready", timeout=10)
    assert "2" in versions
    assert int8_ready.status_code == 200
