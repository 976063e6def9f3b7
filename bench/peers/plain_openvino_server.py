"""A plain FastAPI + OpenVINO server on an entry's model.onnx: what a user writes in 30 lines (a bench peer).

Run: ``python bench/peers/plain_openvino_server.py models/shapes_classifier/1 --port 8100``; then
``POST /classify`` with an image file (multipart ``file``) answers the top class. No batching, no limits.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import openvino as ov
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image


def create_app(folder: Path) -> FastAPI:
    config = json.loads((folder / "config.json").read_text())
    spec = config["input"]
    compiled = ov.Core().compile_model(str(folder / "model.onnx"), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    mean, std = np.array(spec["mean"], np.float32)[:, None, None], np.array(spec["std"], np.float32)[:, None, None]
    app = FastAPI()

    @app.post("/classify")
    async def classify(file: UploadFile) -> dict:
        image = Image.open(io.BytesIO(await file.read())).convert("RGB").resize(tuple(spec["size"][::-1]))
        x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255 - mean) / std)[None]
        logits = compiled({0: x})[compiled.output("logits")][0]
        return {"label": config["categories"][int(logits.argmax())], "score": float(np.exp(logits.max()) / np.exp(logits).sum())}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("entry", type=Path, help="a repository entry folder (config.json + model.onnx)")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.entry), host="127.0.0.1", port=args.port, log_level="warning")
