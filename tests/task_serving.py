"""Serving helpers for the task tests: the app over HTTP and gRPC in this process (so a task registered by a
test module is served), and a classifier entry whose graph also outputs its pooled features."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx
from onnx import helper

from eca_serve.api import create_app
from eca_serve.api.server import Server
from eca_serve.repository import sha256_file
from eca_serve.settings import Settings
from tests.serving_utils import _wait_ready, free_port

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "models" / "shapes_classifier" / "1"


@contextmanager
def http_and_grpc(settings: Settings) -> Iterator[tuple[str, str, object]]:
    """The app on loopback HTTP and gRPC ports in a thread of this process; yields (base URL, gRPC address, app).

    gRPC starts before HTTP (`eca_serve.api.server.Server`), so HTTP answering means both are up.
    """
    port, grpc_port = free_port(), free_port()
    app = create_app(settings.model_copy(update={"port": port, "grpc_port": grpc_port, "host": "127.0.0.1"}))
    server = Server(app, "127.0.0.1", port, grace_s=1.0, grpc_port=grpc_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, 120)
        yield base, f"127.0.0.1:{grpc_port}", app
    finally:
        server.request_exit()
        thread.join(timeout=30)


def classifier_with_embedding(repository: Path, name: str = "shapes_embed", embedding: bool = True) -> Path:
    """The shipped FP32 classifier as entry ``name`` (ONNX only), its graph returning the input of the
    classifier head, ``embedding`` [N, D] (the pooled features), or, with ``embedding`` False, not."""
    folder = repository / name / "1"
    folder.mkdir(parents=True)
    model = onnx.load(str(CLASSIFIER / "model.onnx"))
    config = json.loads((CLASSIFIER / "config.json").read_text())
    head = next(n for n in model.graph.node if "logits" in n.output)
    width = next(i for i in model.graph.initializer if i.name == head.input[1]).dims[1]
    has = any(o.name == "embedding" for o in model.graph.output)
    if embedding and not has:
        model.graph.node.append(helper.make_node("Identity", [head.input[0]], ["embedding"]))
        model.graph.output.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", width]))
        config["outputs"].append({"name": "embedding", "shape": [-1, width], "dtype": "float32"})
    if not embedding and has:
        model.graph.output.remove(next(o for o in model.graph.output if o.name == "embedding"))
        config["outputs"] = [o for o in config["outputs"] if o["name"] != "embedding"]
    onnx.save(model, str(folder / "model.onnx"))
    config["name"] = name
    if embedding:
        config["embedding"] = {"output": "embedding", "dim": width}
    else:
        config.pop("embedding", None)
    onnx_artifact = {**config["artifacts"]["onnx"], "sha256": sha256_file(folder / "model.onnx"),
                     "bytes": (folder / "model.onnx").stat().st_size}
    config["artifacts"] = {"onnx": onnx_artifact}
    config.pop("drift", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
