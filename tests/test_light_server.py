"""The real ``eca-serve serve`` on the shipped models, every endpoint called: torch never enters the process.

The server runs under a two-line wrapper that writes ``sorted(sys.modules)`` to a file when the
process exits (SIGTERM drains and exits normally, so ``atexit`` runs); while it runs, its memory map
is read too, which catches a native torch library loaded without a Python import.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.reliability.serverproc import ServerProcess, wait_ready
from tests.serving_utils import free_port

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "matplotlib", "skimage", "scipy", "onnxscript")
WRAPPER = (
    "import atexit, json, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from eca_serve.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
CLS, DET = "shapes_classifier", "shapes_detector"


def start_wrapped(modules_file: Path, log: Path, ready_timeout_s: float = 180.0) -> ServerProcess:
    """``eca-serve serve`` on the shipped models through `WRAPPER`, once every model is ready."""
    port = free_port()
    command = [sys.executable, "-c", WRAPPER, str(modules_file), "serve", "--model-repository", str(ROOT / "models"),
               "--host", "127.0.0.1", "--port", str(port), "--backend", "onnxruntime", "--device", "cpu"]
    env = {**os.environ, "ECA_SERVE_LOG_LEVEL": "warning", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    return wait_ready(ServerProcess(process, f"http://127.0.0.1:{port}", log), ready_timeout_s)


def call_every_endpoint(base: str) -> dict[str, httpx.Response]:
    """One request per endpoint and option that could pull a library in; name -> response."""
    photo, scene = (ROOT / "examples" / "cat.jpg").read_bytes(), (ROOT / "examples" / "scene.png").read_bytes()
    upload = {"file": ("cat.jpg", photo, "image/jpeg")}
    scene_upload = {"file": ("scene.png", scene, "image/png")}
    v1 = f"{base}/v1/models"
    with httpx.Client(timeout=60) as http:
        calls = {
            "v1 list": lambda: http.get(v1),
            "v1 detail": lambda: http.get(f"{v1}/{CLS}"),
            "v1 classify": lambda: http.post(f"{v1}/{CLS}/classify", files=upload),
            "v1 detect rle": lambda: http.post(f"{v1}/{DET}/detect?masks=rle&score_threshold=0.3", files=scene_upload),
            "v1 detect polygon": lambda: http.post(f"{v1}/{DET}/detect?masks=polygon&score_threshold=0.3", files=scene_upload),
            "v1 attention json": lambda: http.post(f"{v1}/{CLS}/attention", files=upload),
            "v1 attention png": lambda: http.post(f"{v1}/{CLS}/attention?format=png", files=upload),
            "v1 detector attention png": lambda: http.post(f"{v1}/{DET}/attention?format=png", files=scene_upload),
            "v2 live": lambda: http.get(f"{base}/v2/health/live"),
            "v2 ready": lambda: http.get(f"{base}/v2/health/ready"),
            "v2 metadata": lambda: http.get(f"{base}/v2/models/{CLS}"),
            "v2 infer image": lambda: v2_infer_image(http, f"{base}/v2/models/{CLS}/infer", photo),
            "metrics": lambda: http.get(f"{base}/metrics"),
            "healthz": lambda: http.get(f"{base}/healthz"),
        }
        return {name: call() for name, call in calls.items()}


def v2_infer_image(http: httpx.Client, url: str, image: bytes) -> httpx.Response:
    """Open Inference Protocol request with one encoded image as a binary BYTES element."""
    blob = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return http.post(url, content=header + blob, headers={"Inference-Header-Content-Length": str(len(header))})


def native_libraries(pid: int) -> set[str]:
    """File names of the shared libraries mapped into process ``pid``."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if ".so" in path:
            names.add(Path(path).name)
    return names


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, httpx.Response], set[str], list[str]]:
    """(responses, mapped libraries while serving, modules at exit) of one wrapped server run."""
    folder = tmp_path_factory.mktemp("light")
    modules_file = folder / "modules.json"
    server = start_wrapped(modules_file, folder / "server.log")
    try:
        responses = call_every_endpoint(server.base)
        libraries = native_libraries(server.pid)
    finally:
        status = server.stop(timeout_s=60)
    assert status == 0, server.output()
    return responses, libraries, json.loads(modules_file.read_text())


def test_every_endpoint_answers(served):
    responses = served[0]
    assert {name: r.status_code for name, r in responses.items()} == {name: 200 for name in responses}
    detections = responses["v1 detect polygon"].json()["results"][0]["detections"]
    assert detections and all(d["mask"] and len(d["mask"][0]) >= 6 for d in detections)
    assert responses["v1 detect rle"].json()["results"][0]["detections"][0]["mask"]["counts"]
    for name in ("v1 attention png", "v1 detector attention png"):
        assert responses[name].headers["content-type"] == "image/png" and responses[name].content.startswith(b"\x89PNG")
    assert responses["v1 attention json"].json()["results"][0]["layers"]
    assert {o["name"] for o in responses["v2 infer image"].json()["outputs"]} >= {"logits"}
    assert "eca_serve" in responses["metrics"].text


def test_no_torch_in_the_serving_process(served):
    _, libraries, modules = served
    assert "eca_serve.api.app" in modules and "onnxruntime" in modules  # the file really lists the server's modules
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == [], f"heavy modules imported while serving: {loaded[:20]}"
    torch_libraries = sorted(name for name in libraries if name.startswith(("libtorch", "libc10", "libtorchvision")))
    assert any(name.startswith("libonnxruntime") or "onnxruntime" in name for name in libraries), sorted(libraries)[:40]
    assert torch_libraries == [], torch_libraries


def test_torch_backends_without_torch_name_the_extra():
    """As in the base install (torch not importable): selecting a torch backend is a ConfigError, not a crash."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from eca_serve.errors import ConfigError\n"
        "from eca_serve.repository import read_config\n"
        "from eca_serve.runtime import BackendOptions, create_backend\n"
        f"folder = Path({str(ROOT / 'models' / CLS / '1')!r})\n"
        "try:\n"
        "    create_backend(folder, read_config(folder), BackendOptions('torchscript'))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "eca-serve[torch]" in result.stdout, result.stdout
