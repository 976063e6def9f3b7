"""The ``OTEL_*`` variables eca-serve reads, and a server without tracing importing no OpenTelemetry SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eca_serve.tracing import TracingConfig

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    assert TracingConfig.from_env({}) == TracingConfig("otlp", None, "http/protobuf", "parentbased_always_on", 1.0, "eca-serve")


def test_every_variable() -> None:
    config = TracingConfig.from_env({
        "OTEL_TRACES_EXPORTER": "Console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_SERVICE_NAME": "edge-1"})
    assert config == TracingConfig("console", "http://collector:4317", "grpc", "parentbased_traceidratio", 0.25, "edge-1")


@pytest.mark.parametrize(("env", "endpoint", "protocol"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces", "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/x"}, "http://t:9/x", "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://c:4317", "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, None, "http/protobuf"),
])
def test_endpoint_and_protocol_follow_the_spec(env: dict[str, str], endpoint: str | None, protocol: str) -> None:
    config = TracingConfig.from_env(env)
    assert (config.endpoint, config.protocol) == (endpoint, protocol)


def test_ratio_only_for_ratio_samplers() -> None:
    assert TracingConfig.from_env({"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "0.1"}).ratio == 1.0
    assert TracingConfig.from_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}).ratio == 0.0


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin' is not supported; use one of otlp, console, none"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER='sometimes'"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "must be a number in [0, 1]"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "must be in [0, 1]"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TracingConfig.from_env(env)
    assert message in str(info.value)


def test_bad_otel_variable_is_a_config_error_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from eca_serve.api import create_app
    from eca_serve.errors import ConfigError
    from eca_serve.settings import Settings

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        create_app(Settings(model_repository=ROOT / "models", tracing=True))
    create_app(Settings(model_repository=ROOT / "models"))  # tracing off: the variables are not read


SERVE_ONCE = """
import json, sys, time
from fastapi.testclient import TestClient
from eca_serve.api import create_app
from eca_serve.settings import Settings
app = create_app(Settings(model_repository=sys.argv[1], models=["shapes_classifier"]))
with TestClient(app) as client:
    while client.get("/healthz").status_code != 200:
        time.sleep(0.05)
    photo = open(sys.argv[2], "rb").read()
    assert client.post("/v1/models/shapes_classifier/classify", files={"file": ("a.jpg", photo, "image/jpeg")}).status_code == 200
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""


def test_tracing_off_imports_no_opentelemetry_sdk() -> None:
    """FastAPI itself imports opentelemetry-api (its native telemetry, idle without a global provider): not the SDK."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "ECA_SERVE_TRACING": "0"}
    done = subprocess.run([sys.executable, "-c", SERVE_ONCE, str(ROOT / "models"), str(ROOT / "examples" / "cat.jpg")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [m for m in modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
    assert "opentelemetry" in modules  # FastAPI's own import (see the docstring): if this fails, the note in README is stale
