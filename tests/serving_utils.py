"""A real eca-serve server (uvicorn on a loopback socket, in a thread) for the HTTP tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import torch
import uvicorn

import eca_serve
from eca_serve.api import create_app
from eca_serve.export import ExportOptions, export_model
from eca_serve.settings import Settings

SMALL = {"widths": [16, 32, 64, 128], "stem_width": 16}
SHAPES = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "cross", "ellipse"]


def small_classifier(seed: int = 0) -> torch.nn.Module:
    """A narrow ECA-ResNet-18 with 8 classes and a 64 px input, random (seeded) weights."""
    from eca_serve.models import PreprocessConfig

    torch.manual_seed(seed)
    model = eca_serve.create_model("eca_resnet18", num_classes=8, categories=SHAPES, **SMALL)
    model.config = model.config.replace(preprocess=PreprocessConfig(input_size=(64, 64), resize=72))
    return model


def export_small_classifier(repository: Path, name: str = "shapes_small", version: int = 1) -> torch.nn.Module:
    model = small_classifier()
    export_model(model, repository / name / str(version), ExportOptions(name=name, version=version, check_inputs=[(1, 64, 64)]))
    return model


def export_tiny_detector(repository: Path, name: str = "det",
                         categories: tuple[str, ...] | list[str] = ("__background__", "a", "b")) -> None:
    """A narrow Mask R-CNN (ECA-ResNet-18-FPN, random seeded weights, every detection kept), ONNX only."""
    torch.manual_seed(0)
    model = eca_serve.create_model("maskrcnn_eca_resnet18_fpn", num_classes=len(categories), categories=list(categories),
                                   widths=[16, 32, 64, 128], stem_width=16, out_channels=32, box_head_dim=64,
                                   mask_head_layers=2, mask_head_dim=32, min_size=128, max_size=192, score_thresh=0.0)
    export_model(model, repository / name / "1", ExportOptions(name=name, formats=("onnx",), check_inputs=[(1, 128, 128)]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(settings: Settings, ready_timeout_s: float = 60.0) -> Iterator[tuple[str, object]]:
    """Start the app on a free loopback port; yields (base URL, app) once every model is ready."""
    settings = settings.model_copy(update={"port": free_port(), "host": "127.0.0.1"})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{settings.host}:{settings.port}"
    try:
        _wait_ready(base, ready_timeout_s)
        yield base, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _wait_ready(base: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/healthz", timeout=2)
            if response.status_code == 200:
                return
            if response.json().get("error"):
                raise RuntimeError(f"server failed to load: {response.json()['error']}")
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")
