"""A plain FastAPI + ONNX Runtime classifier server: the peer eca-serve is compared with.

What a 30-line server does: a sync endpoint (FastAPI's thread pool), ``UploadFile`` multipart,
full-resolution Pillow decode, torchvision's PIL eval transform in numpy, batch 1 on one ORT session
with its default threads, the top-5 as JSON. Same URL as eca-serve's v1 classify, so one load generator
drives both. Run: ``python bench/peers/plain_ort_server.py --entry MODEL_FOLDER --port 8100``.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image


def create_app(entry: Path) -> FastAPI:
    config = json.loads((entry / "config.json").read_text())
    spec, name = config["input"], config["name"]
    session = ort.InferenceSession(str(entry / config["artifacts"]["onnx"]["file"]), providers=["CPUExecutionProvider"])
    input_name, (height, width) = session.get_inputs()[0].name, spec["size"]
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)
    app = FastAPI()

    @app.post(f"/v1/models/{name}/classify")
    def classify(file: Annotated[UploadFile, File()]) -> dict:
        image = Image.open(io.BytesIO(file.file.read())).convert("RGB")
        scale = spec["resize"] / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        pixels = np.asarray(image.crop((left, top, left + width, top + height)), np.float32) / 255
        x = ((pixels - mean) / std).transpose(2, 0, 1)[None].copy()
        logits = session.run(["logits"], {input_name: x})[0][0]
        top5 = np.argsort(-logits)[:5]
        return {"model": name, "top": [{"index": int(i), "logit": float(logits[i])} for i in top5]}

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", type=Path, required=True, help="model version folder with config.json and the ONNX file")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.entry), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
